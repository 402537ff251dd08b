/*
 * fuzz_correlation.c - the correlation table parser (correlation.h).
 *
 * Input: the bytes of a table file. Either it loads, and then every lookup
 * answers, or it is refused with a "PATH:LINE: ..." / "PATH: ..." message;
 * never a crash, leak or hang.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dicomsort/correlation.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[4200];
	struct correlation *table = NULL;
	struct error err = ERROR_INIT;

	if (path[0] == '\0')
		snprintf(path, sizeof(path), "%s/table.csv", fuzz_scratch_dir());
	fuzz_write_file(path, data, size);
	if (correlation_load(&table, path, &err) == -1) {
		if (strncmp(err.msg, path, strlen(path)) != 0) {
			fprintf(stderr, "error does not name the file: %s\n",
				err.msg);
			abort();
		}
		return 0;
	}
	/* Look up every whitespace/comma-separated token of the input:
	 * exercises the hash table with the IDs it was built from. */
	{
		char *copy = malloc(size + 1), *save = NULL;
		size_t found = 0;

		if (copy != NULL) {
			memcpy(copy, data, size);
			copy[size] = '\0';
			for (char *tok = strtok_r(copy, " \t\f\v,\r\n", &save); tok;
			     tok = strtok_r(NULL, " \t\f\v,\r\n", &save)) {
				const char *id = correlation_lookup(table, tok);

				if (id != NULL) {
					found++;
					if (strlen(id) > size)
						abort();
				}
			}
			free(copy);
		}
		if (correlation_size(table) > 0 && found == 0 &&
		    memchr(data, '#', size) == NULL &&
		    memchr(data, '\0', size) == NULL &&
		    !(size >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0))
			abort();	/* some old ID must be found */
	}
	correlation_lookup(table, "");
	correlation_unref(correlation_ref(table));
	correlation_unref(table);
	return 0;
}
