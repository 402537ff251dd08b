/*
 * fuzz_backend.c - the C backend of dicom.h (src/dataset.c) against DCMTK
 * (issue 14): where ds_open() claims a file, DCMTK must load it too and
 * write the same bytes as ds_save_fd(), with the source's preamble and
 * with a zeroed one. A file the C backend declines is DCMTK's alone.
 *
 * DCMTK's side runs with DICOMSORT_TEST_BACKEND=dcmtk (test-only, see
 * dicom.cpp): parsed by DCMTK, never by the fast path.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dataset.h"
#include "dicomsort/dicom.h"
#include "fuzz_common.h"

static void die(const char *what)
{
	fprintf(stderr, "fuzz_backend: %s\n", what);
	abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct error err = ERROR_INIT;

	(void)argc;
	(void)argv;
	if (setenv("DICOMSORT_TEST_BACKEND", "dcmtk", 1) == -1 ||
	    dicom_init(&err) == -1)
		die("setup");
	return 0;
}

/* What fd holds; aborts on failure. */
static unsigned char *contents(int fd, size_t *len)
{
	off_t end = lseek(fd, 0, SEEK_END);
	unsigned char *buf;

	if (end < 0 || (buf = malloc((size_t)end + 1)) == NULL ||
	    pread(fd, buf, (size_t)end, 0) != end)
		die("cannot read back an output");
	*len = (size_t)end;
	return buf;
}

static unsigned char *dcmtk_output(const uint8_t *data, size_t size, bool zero,
				   size_t *len)
{
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size), *out;
	int fd;

	if (to == NULL)
		die("out of memory");
	memcpy(to, data, size);
	if (dicom_load_bytes(&file, mem, &err) == -1)
		die("DCMTK refuses a file the C backend claimed");
	if ((fd = memfd_create("dcmtk", MFD_CLOEXEC)) == -1)
		die("memfd_create");
	if (zero)
		dicom_zero_preamble(file);
	if (dicom_save_fd(file, fd, &err) == -1)
		die("DCMTK cannot write a file the C backend claimed");
	out = contents(fd, len);
	close(fd);
	dicom_free(file);
	dicom_bytes_free(mem);
	return out;
}

static unsigned char *c_output(const struct ds_file *f, bool zero, size_t *len)
{
	struct error err = ERROR_INIT;
	unsigned char *out;
	int fd = memfd_create("c", MFD_CLOEXEC);

	if (fd == -1)
		die("memfd_create");
	if (ds_save_fd(f, fd, zero, &err) == -1)
		die("the C backend cannot write a file it claimed");
	out = contents(fd, len);
	close(fd);
	return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ds_file *f = NULL;
	int rc = ds_open(&f, data, size);

	if (rc == DS_NO_MEMORY)
		die("out of memory");
	if (rc != 0)
		return 0;
	for (int zero = 0; zero < 2; zero++) {
		size_t a_len, b_len;
		unsigned char *a = dcmtk_output(data, size, zero, &a_len);
		unsigned char *b = c_output(f, zero, &b_len);

		if (a_len != b_len || memcmp(a, b, a_len) != 0)
			die("the backends write different bytes");
		free(a);
		free(b);
	}
	ds_free(f);
	return 0;
}
