/*
 * fuzz_config.c - the configuration loader (config.h, libconfig syntax).
 *
 * Input: the bytes of a dicomsortd.conf. It loads, with every required
 * folder set and values in range, or it is refused naming the file; never a
 * crash, leak or hang. @include works relative to the scratch folder.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dicomsort/config.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[4200];
	struct config cfg;
	struct error err = ERROR_INIT;
	struct deid_options deid;

	if (path[0] == '\0')
		snprintf(path, sizeof(path), "%s/dicomsortd.conf",
			 fuzz_scratch_dir());
	fuzz_write_file(path, data, size);
	if (config_load(&cfg, path, &err) == -1) {
		if (err.msg[0] == '\0') {
			fprintf(stderr, "config error without a message\n");
			abort();
		}
		return 0;
	}
	if (cfg.input == NULL || cfg.output == NULL || cfg.quarantine == NULL ||
	    cfg.input[0] != '/' || cfg.workers < 1 || cfg.layout == NULL ||
	    cfg.retry.parse_attempts < 1 ||
	    cfg.retry.backoff_max_ms < cfg.retry.backoff_ms)
		abort();
	config_deid_options(&cfg, &deid);
	config_ignored(&cfg, "image.part");
	config_ignored(&cfg, ".hidden");
	config_release(&cfg);
	return 0;
}
