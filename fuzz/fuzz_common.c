/* fuzz_common.c - see fuzz_common.h. */
#include "fuzz_common.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char scratch[4096];

const char *fuzz_scratch_dir(void)
{
	const char *tmp;

	if (scratch[0] != '\0')
		return scratch;
	tmp = getenv("TMPDIR");
	snprintf(scratch, sizeof(scratch), "%s/dicomsort-fuzz-XXXXXX",
		 tmp && tmp[0] ? tmp : "/tmp");
	if (mkdtemp(scratch) == NULL) {
		perror("mkdtemp");
		abort();
	}
	return scratch;
}

void fuzz_write_file(const char *path, const uint8_t *data, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	size_t done = 0;

	if (fd == -1) {
		perror(path);
		abort();
	}
	while (done < size) {
		ssize_t n = write(fd, data + done, size - done);

		if (n <= 0) {
			perror("write");
			abort();
		}
		done += (size_t)n;
	}
	close(fd);
}

static unsigned temp_seen;

static int remove_one(const char *path, const struct stat *st, int flag,
		      struct FTW *ftw)
{
	(void)st;
	(void)flag;
	if (strncmp(path + ftw->base, ".dicomsort-", 11) == 0)
		temp_seen++;
	if (ftw->level > 0)
		remove(path);
	return 0;
}

unsigned fuzz_clear_dir(const char *dir)
{
	temp_seen = 0;
	nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
	return temp_seen;
}
