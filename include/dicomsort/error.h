/*
 * error.h - the error value every core function fills in instead of logging.
 *
 * The core (dcm, correlation, layout, deid, fsutil, pipeline) never prints, logs or
 * exits. A failing function returns -1 and fills a caller-owned struct error;
 * only the front ends (dicomsort, dicomsortd) decide what to say and do.
 * The kind tells the caller what to do with the file:
 *   ERROR_INPUT      the input is bad: reject it / quarantine it.
 *   ERROR_TRANSIENT  the environment failed (ENOSPC, EIO, EACCES, source
 *                    changed under us): keep the source, retry later.
 *   ERROR_SETUP      the configuration or installation is wrong: stop.
 */
#ifndef DICOMSORT_ERROR_H
#define DICOMSORT_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum error_kind {
	ERROR_NONE = 0,
	ERROR_INPUT,
	ERROR_TRANSIENT,
	ERROR_SETUP,
};

#define ERROR_MSG_MAX 512

struct error {
	enum error_kind kind;
	int errnum;			/* errno behind it, 0 if none */
	char msg[ERROR_MSG_MAX];	/* one line, no trailing newline */
};

#define ERROR_INIT { ERROR_NONE, 0, "" }

/**
 * Fill *err (which may be NULL) with kind, errnum and a printf-formatted
 * message; when errnum is not 0, ": strerror(errnum)" is appended.
 * Always returns -1, so callers can write `return error_set(...);`.
 */
int error_set(struct error *err, enum error_kind kind, int errnum,
	      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/** The kind an errno from writing output should get: ENOSPC, EIO, EACCES,
 *  EROFS, EDQUOT, ENOMEM... are transient, anything else is too unless it
 *  clearly names bad input. */
enum error_kind error_kind_for_output_errno(int errnum);

void error_clear(struct error *err);

#ifdef __cplusplus
}
#endif

#endif
