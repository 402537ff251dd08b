/*
 * fuzz_common.h - helpers shared by the libFuzzer targets (fuzz/README.md).
 *
 * Each target defines LLVMFuzzerTestOneInput(). With -DDICOMSORT_FUZZ=ON they
 * are linked with clang's libFuzzer; otherwise replay.c supplies a main()
 * that runs every file named on the command line once, which is how ctest
 * replays fuzz/regressions/ and the seed corpora in every build.
 */
#ifndef DICOMSORT_FUZZ_COMMON_H
#define DICOMSORT_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A private scratch folder for this process (created once, never removed
 * while the process runs; mkdtemp under $TMPDIR or /tmp). Aborts on error. */
const char *fuzz_scratch_dir(void);

/* Write data to path (created/truncated, mode 0600). Aborts on error. */
void fuzz_write_file(const char *path, const uint8_t *data, size_t size);

/* Remove everything below dir, keeping dir itself; returns how many of the
 * names removed were dicomsort temp files (".dicomsort-*"). */
unsigned fuzz_clear_dir(const char *dir);

#endif
