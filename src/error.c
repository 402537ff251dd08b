/* error.c - filling struct error; see error.h. */
#include "dicomsort/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int error_set(struct error *err, enum error_kind kind, int errnum,
	      const char *fmt, ...)
{
	va_list ap;
	int n;

	if (err == NULL)
		return -1;
	err->kind = kind;
	err->errnum = errnum;
	va_start(ap, fmt);
	n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		err->msg[0] = '\0';
	if (errnum != 0) {
		size_t len = strlen(err->msg);
		snprintf(err->msg + len, sizeof(err->msg) - len, ": %s",
			 strerror(errnum));
	}
	return -1;
}

enum error_kind error_kind_for_output_errno(int errnum)
{
	switch (errnum) {
	case ENAMETOOLONG:
	case EILSEQ:
		return ERROR_INPUT;
	default:
		return ERROR_TRANSIENT;
	}
}

void error_clear(struct error *err)
{
	if (err == NULL)
		return;
	err->kind = ERROR_NONE;
	err->errnum = 0;
	err->msg[0] = '\0';
}
