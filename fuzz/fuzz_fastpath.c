/*
 * fuzz_fastpath.c - the DICOM adapter's fast path (part10.h) against DCMTK.
 *
 * Input: the bytes of one file, written to a scratch file and loaded twice:
 * with dicom_load_fd() (the fast path, where it vouches for the file) and
 * with dicom_load() (always DCMTK). Where the fast path vouched:
 *   - DCMTK must load the file too;
 *   - every probed top-level value, as UTF-8 and raw, and whether the
 *     source's bytes are reusable, must be the same both ways;
 *   - after the seed profile's changes (PatientBirthDate emptied,
 *     PatientName and PatientID replaced), the spliced output and DCMTK's
 *     re-encoded one must both load with DCMTK and give the same values.
 * And dicom_load_fd_head() (only a head read, the rest walked from the
 * descriptor) against dicom_load_fd(): see head_vs_whole().
 * Anything else is left to fuzz_pipeline.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dicomsort/dicom.h"
#include "fuzz_common.h"

static char input[4200], saved[2][4200];

static const uint32_t probes[] = {
	TAG_SpecificCharacterSet, TAG_SOPClassUID, TAG_SOPInstanceUID,
	TAG_StudyDate, TAG_Modality, TAG_PatientName, TAG_PatientID,
	TAG_PatientBirthDate, TAG_SeriesNumber, TAG_SeriesDescription,
	DCM_TAG(0x0008, 0x0008), DCM_TAG(0x0020, 0x0013),
	DCM_TAG(0x0028, 0x0010),	/* Rows: binary, the fast path defers */
};

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_fastpath: %s: %s\n", what, detail);
	abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct error err = ERROR_INIT;
	const char *dir = fuzz_scratch_dir();

	(void)argc;
	(void)argv;
	if (dicom_init(&err) == -1)
		die("dicom_init", err.msg);
	snprintf(input, sizeof(input), "%s/input.dcm", dir);
	snprintf(saved[0], sizeof(saved[0]), "%s/fast.dcm", dir);
	snprintf(saved[1], sizeof(saved[1]), "%s/dcmtk.dcm", dir);
	return 0;
}

static void same_string(int rc_a, const char *a, int rc_b, const char *b,
			uint32_t tag, const char *how)
{
	char where[64];

	snprintf(where, sizeof(where), "(%04x,%04x) %s", DCM_GROUP(tag),
		 DCM_ELEMENT(tag), how);
	if (rc_a != rc_b)
		die("presence differs", where);
	if (rc_a == 1 && strcmp(a, b) != 0)
		die("value differs", where);
}

static const struct {
	const char *how;
	int (*get)(struct dicom_file *, uint32_t, char **);
} getters[] = { { "raw", dicom_get_raw }, { "as UTF-8", dicom_get_string } };

/* Raw values first: converting one, or reading a binary one, may have
 * DCMTK parse the file, and the splicing writer would go untested. */
static void compare(struct dicom_file *a, struct dicom_file *b, bool utf8)
{
	for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
		if (probes[i] == DCM_TAG(0x0028, 0x0010) && !utf8)
			continue;
		for (size_t g = 0; g < (utf8 ? 2u : 1u); g++) {
			char *va = NULL, *vb = NULL;
			int ra = getters[g].get(a, probes[i], &va);
			int rb = getters[g].get(b, probes[i], &vb);

			same_string(ra, va, rb, vb, probes[i], getters[g].how);
			free(va);
			free(vb);
		}
	}
}

/* The seed profile's changes, as deid.c makes them. */
static void seed(struct dicom_file *f)
{
	struct error err = ERROR_INIT;
	char *v = NULL;

	if (dicom_get_raw(f, TAG_PatientBirthDate, &v) == 1 &&
	    dicom_empty(f, TAG_PatientBirthDate, &err) == -1)
		die("empty", err.msg);
	free(v);
	v = NULL;
	if (dicom_get_raw(f, TAG_PatientName, &v) == 1 &&
	    dicom_put_string(f, TAG_PatientName, "ANONYMIZED", &err) == -1)
		die("put", err.msg);
	free(v);
	v = NULL;
	if (dicom_get_raw(f, TAG_PatientID, &v) == 1 &&
	    dicom_put_string(f, TAG_PatientID, "NEW001", &err) == -1)
		die("put", err.msg);
	free(v);
}

static struct dicom_file *save_and_load(struct dicom_file *f, const char *path)
{
	struct error err = ERROR_INIT;
	struct dicom_file *again = NULL;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd == -1)
		die("open", path);
	/* DCMTK may be unable to encode what it read: then both must fail. */
	if (dicom_save_fd(f, fd, &err) == -1) {
		close(fd);
		return NULL;
	}
	close(fd);
	if (dicom_load(&again, path, &err) == -1)
		die("saved file does not load", err.msg);
	return again;
}

/*
 * dicom_load_fd_head() - a head of a few hundred bytes here, so that the
 * fuzzed files are larger than it - must judge as dicom_load_fd() does:
 * the same result and reason, the same values, and after the seed's
 * changes (the rest of the file read then) outputs that agree.
 */
static void head_vs_whole(int fd, size_t size, const char *proc)
{
	struct dicom_file *head = NULL, *whole = NULL, *out[2];
	struct error e1 = ERROR_INIT, e2 = ERROR_INIT;
	int rc1 = dicom_load_fd_head_n(&head, fd, (long long)size, proc,
				       200 + size % 300, &e1);
	int rc2 = dicom_load_fd(&whole, fd, (long long)size, proc, &e2);

	if (rc1 != rc2)
		die("head and whole file disagree", rc1 == -1 ? e1.msg : e2.msg);
	if (rc1 == -1) {
		if (e1.kind != e2.kind || strcmp(e1.msg, e2.msg) != 0)
			die("head and whole file give different reasons", e1.msg);
		return;
	}
	if (dicom_bytes_reusable(head) != dicom_bytes_reusable(whole))
		die("reusable differs (head)", "");
	compare(head, whole, false);
	seed(head);
	seed(whole);
	out[0] = save_and_load(head, saved[0]);
	out[1] = save_and_load(whole, saved[1]);
	if ((out[0] == NULL) != (out[1] == NULL))
		die("head: one path saved, the other did not", "");
	if (out[0] != NULL)
		compare(out[0], out[1], true);
	compare(head, whole, true);
	dicom_free(out[0]);
	dicom_free(out[1]);
	dicom_free(head);
	dicom_free(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dicom_file *fast = NULL, *slow = NULL, *out[2];
	struct error err = ERROR_INIT;
	char proc[64];
	int fd;

	fuzz_write_file(input, data, size);
	fd = open(input, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		die("open", input);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	head_vs_whole(fd, size, proc);
	if (dicom_load_fd(&fast, fd, (long long)size, proc, &err) == -1 ||
	    dicom_parsed(fast)) {
		dicom_free(fast);
		close(fd);
		return 0;
	}
	if (dicom_load(&slow, input, &err) == -1)
		die("the fast path vouched for a file DCMTK refuses", err.msg);
	if (dicom_bytes_reusable(fast) != dicom_bytes_reusable(slow))
		die("reusable differs", "");
	compare(fast, slow, false);
	seed(fast);
	seed(slow);
	out[0] = save_and_load(fast, saved[0]);
	out[1] = save_and_load(slow, saved[1]);
	if ((out[0] == NULL) != (out[1] == NULL))
		die("one path saved, the other did not", "");
	if (out[0] != NULL)
		compare(out[0], out[1], true);
	compare(fast, slow, true);
	dicom_free(out[0]);
	dicom_free(out[1]);
	dicom_free(fast);
	dicom_free(slow);
	close(fd);
	return 0;
}
