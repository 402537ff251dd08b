/*
 * codestream.h - metadata inside compressed pixel data.
 *
 * Owns: finding and removing the segments of a JPEG, JPEG-LS or JPEG 2000
 * codestream that carry metadata rather than image (JPEG APP1-APP13,
 * APP15 and COM, which hold EXIF owners, GPS positions, comments; JPEG
 * 2000 COM markers and the XML and UUID boxes of a JP2 wrapper), without
 * touching a byte of coded image data. APP0 (JFIF) and APP14 (Adobe) stay:
 * they decide how decoders read the colours. Pure byte work, no I/O.
 */
#ifndef DICOMSORT_CODESTREAM_H
#define DICOMSORT_CODESTREAM_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum codestream_kind {
	CODESTREAM_NONE = 0,	/* no metadata segments to look for */
	CODESTREAM_JPEG,	/* ISO 10918 (baseline, extended, lossless) */
	CODESTREAM_JPEG_LS,	/* ISO 14495 */
	CODESTREAM_J2K,		/* ISO 15444 codestream or JP2 file */
};

/** The kind of codestream a transfer syntax UID carries. */
enum codestream_kind codestream_kind_of(const char *transfer_syntax);

/** Whether buf starts a codestream of this kind (JPEG/JPEG-LS: SOI;
 *  J2K: SOC or the JP2 signature box). */
bool codestream_starts(enum codestream_kind kind, const unsigned char *buf,
		       size_t len);

/**
 * Remove the metadata segments of the one codestream in buf (len bytes),
 * in place; *out_len gets the new length (<= len). Bytes after the end
 * marker (EOI, EOC) go too: they are no image. Returns the number of
 * segments removed, or -1 when the codestream is not understood (buf is
 * then half rewritten: work on a copy): the caller must not pass such
 * data on as clean.
 */
int codestream_strip(enum codestream_kind kind, unsigned char *buf, size_t len,
		     size_t *out_len);

#ifdef __cplusplus
}
#endif

#endif
