/*
 * dimse_fixture.h - test-only DICOM files for test_dimse and
 * bench/forward_dimse: small images made with DCMTK in a chosen transfer
 * syntax (RLE and JPEG Lossless really compressed), and the digest of
 * their decoded pixels, to prove that what a peer stored is what was sent.
 */
#ifndef DIMSE_FIXTURE_H
#define DIMSE_FIXTURE_H

#ifdef __cplusplus
extern "C" {
#endif

/* A 16x16 (rows x cols given) MONOCHROME2 image with pixels from seed;
 * the patient is named "SECRET^PATIENT", ID "SECRET-ID". 0 or -1. */
int fixture_make(const char *path, const char *sop_class,
		 const char *sop_instance, const char *ts_uid, unsigned seed,
		 int rows, int cols);

/* MD5 (hex) of the decoded pixels, and the file's transfer syntax UID.
 * 0 or -1. */
int fixture_pixels(const char *path, char md5[33], char ts_uid[65]);

#ifdef __cplusplus
}
#endif

#endif
