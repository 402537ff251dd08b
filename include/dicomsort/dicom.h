/*
 * dicom.h - the DICOM adapter: the only door to DCMTK (dicom.cpp is the only C++
 * file in the tree). No DCMTK type, exception or log line crosses it.
 *
 * Owns: reading a DICOM object from a file, reading attribute values as UTF-8
 * (honouring SpecificCharacterSet), changing and removing attributes at any
 * nesting level, and writing the object back in its original transfer syntax.
 *
 * Protocol:
 *   1. dicom_init() once in main(), before any thread starts: it silences
 *      DCMTK's console logger and checks that the data dictionary's files
 *      are there (fails fast); DCMTK parses them on first use (thread-safe),
 *      so a run whose files never need DCMTK never pays for it.
 *   2. dicom_load() a file, read/modify it, dicom_save_fd() it, dicom_free() it.
 *      One struct dicom_file belongs to one thread at a time.
 *
 * Large values (pixel data) are loaded lazily: DCMTK keeps only an offset and
 * re-opens the *path* given to dicom_load() when it saves. The caller must keep
 * that path pointing at unchanged bytes until dicom_save_fd() returned; pipeline
 * passes "/proc/self/fd/N" of its private snapshot of the source (a file
 * nobody else writes), or parses a small one in memory (dicom_load_bytes()).
 *
 * Tags are uint32_t: group << 16 | element.
 * Return convention: 0 on success, -1 with *err filled (see error.h), except
 * the getters, whose return value says present (1), absent (0) or failed (-1).
 */
#ifndef DICOMSORT_DICOM_H
#define DICOMSORT_DICOM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "dicomsort/error.h"
#include "dicomsort/tag.h"

struct dicom_file;
struct dicom_elem;	/* an element met by dicom_visit(); valid only in the callback */

/** Once per process, before threads start. -1 (ERROR_SETUP) if a file of
 *  the DICOM dictionary (DCMDICTPATH, or DCMTK's default) cannot be read. */
int dicom_init(struct error *err);

/**
 * Parse the file at path. A Part 10 file (128-byte preamble, "DICM", meta
 * header) is accepted; so is a bare dataset without preamble and meta header
 * (old modalities write those), but only if it parses cleanly and carries a
 * SOPClassUID and a SOPInstanceUID, so a text file is never taken for DICOM.
 * On success *out owns the object; on failure -1 with ERROR_INPUT and a
 * message such as "not a DICOM file", "truncated DICOM file (...)" or
 * ERROR_TRANSIENT when the file could not be read at all. Sequences nested
 * deeper than DICOM_MAX_DEPTH, and more than DICOM_MAX_UNORDERED elements
 * out of tag order, are refused before DCMTK reads the file.
 */
int dicom_load(struct dicom_file **out, const char *path, struct error *err);

/** Files up to this size are read whole and parsed in memory. */
#define DICOM_LOAD_IN_MEMORY (1024 * 1024)

/**
 * dicom_load() of the open file fd, size bytes long, whose path (for the
 * larger files, and for classifying errors) is path - "/proc/self/fd/N"
 * in pipeline. A file up to DICOM_LOAD_IN_MEMORY bytes is read with pread()
 * and parsed from memory: one read instead of DCMTK's seeks and re-opens,
 * and no value is loaded lazily (dicom_save_fd() never re-opens path). A
 * larger one is loaded lazily from path, exactly as dicom_load() does.
 */
int dicom_load_fd(struct dicom_file **out, int fd, long long size,
		  const char *path, struct error *err);

/** What dicom_load_fd_head() reads first: the meta header and the
 *  attributes before the pixel data of most images. */
#define DICOM_HEAD_BYTES 4096

/**
 * dicom_load_fd() reading only what deciding needs, for a file that is
 * moved as it is (a rename: its bytes are never copied here). The first
 * DICOM_HEAD_BYTES are read; the fast path (part10.h) indexes them and
 * walks the rest of the file's element headers from fd, skipping large
 * values by offset, as strictly as a file in memory: a value longer than
 * the file, a broken item of encapsulated pixel data, trailing bytes are
 * all seen. Whatever it cannot vouch for (another transfer syntax, a
 * structure it cannot follow), and a file of at most DICOM_HEAD_BYTES or
 * more than DICOM_LOAD_IN_MEMORY, is loaded by dicom_load_fd(), which
 * also names what is wrong with it. fd must stay open while the file is
 * used: a value past the head is read when asked for (the bytes up to
 * its end), and a save or a full parse reads every byte (failing as
 * "source changed" if the head reads differently then).
 */
int dicom_load_fd_head(struct dicom_file **out, int fd, long long size,
		       const char *path, struct error *err);
/* The same with a head of head bytes: for tests and fuzz targets, whose
 * files are smaller than DICOM_HEAD_BYTES. */
int dicom_load_fd_head_n(struct dicom_file **out, int fd, long long size,
			 const char *path, size_t head, struct error *err);

/*
 * A file's bytes read by the caller straight into memory the adapter then
 * parses without a copy: dicom_bytes_new() gives size writable bytes (NULL
 * when out of memory; *out is then NULL too), dicom_load_bytes() parses
 * them as dicom_load() would - all in memory, nothing ever re-read from
 * anywhere (pipeline's private snapshot of a small source) - taking them
 * over (the buffer is left empty, still to be freed).
 */
struct dicom_bytes;
unsigned char *dicom_bytes_new(struct dicom_bytes **out, size_t size);
void dicom_bytes_free(struct dicom_bytes *bytes);
int dicom_load_bytes(struct dicom_file **out, struct dicom_bytes *bytes,
		     struct error *err);

/** The bytes a file loaded from memory (dicom_load_bytes(), or
 *  dicom_load_fd() of a small file) was parsed from; NULL otherwise. */
const unsigned char *dicom_file_bytes(const struct dicom_file *file, size_t *len);

/** The first *len bytes of the file held in memory: all of them as
 *  dicom_file_bytes() gives, or the head of dicom_load_fd_head(); NULL
 *  when none are (a large file loaded from its path). */
const unsigned char *dicom_file_head(const struct dicom_file *file, size_t *len);

void dicom_free(struct dicom_file *file);

/**
 * Whether DCMTK has parsed the object. A plain Part 10 file loaded with
 * dicom_load_fd() is first only indexed (part10.h): reading top-level text
 * values and changing them in place need no parse, and whatever needs more
 * has DCMTK parse the bytes then, transparently. For tests and benchmarks.
 */
bool dicom_parsed(const struct dicom_file *file);

/** The transfer syntax the object was read in, as a UID string (static). */
const char *dicom_transfer_syntax(const struct dicom_file *file);

/** Force every lazily loaded value into memory, verifying it is readable. */
int dicom_load_all(struct dicom_file *file, struct error *err);

/** Tag of a dictionary keyword such as "SeriesDescription". 0 or -1. */
int dicom_tag_from_keyword(const char *keyword, uint32_t *tag);

/** Keyword of a tag into buf ("" for unknown/private). */
void dicom_keyword_from_tag(uint32_t tag, char *buf, size_t len);

/** The standard (public dictionary) keyword equal to keyword but for case,
 *  into buf: 0 found, -1 none. For "did you mean" hints. */
int dicom_standard_keyword_nocase(const char *keyword, char *buf, size_t len);

/**
 * Top-level attribute value as a NUL-terminated UTF-8 string in *utf8
 * (malloc'd, caller frees), converted from the dataset's
 * SpecificCharacterSet; multiple values joined by '\'; leading and trailing
 * padding spaces removed. Bytes that cannot be converted become '?', so a
 * value is always returned if the attribute is present.
 * Returns 1 present (maybe ""), 0 absent (*utf8 = NULL), -1 on error.
 */
int dicom_get_string(struct dicom_file *file, uint32_t tag, char **utf8);

/** Raw bytes of a top-level string value, no charset conversion. Same
 *  returns as dicom_get_string(). */
int dicom_get_raw(struct dicom_file *file, uint32_t tag, char **raw);

/**
 * Set a top-level attribute (inserted if absent) to value, whose bytes are
 * stored as they are: pass ASCII, or text in the dataset's character set.
 */
int dicom_put_string(struct dicom_file *file, uint32_t tag, const char *value,
		   struct error *err);

/** Make a top-level attribute zero length, if present. */
int dicom_empty(struct dicom_file *file, uint32_t tag, struct error *err);

/** Remove a top-level attribute if present. */
int dicom_delete(struct dicom_file *file, uint32_t tag, struct error *err);

/**
 * Convert every string value of the dataset to UTF-8 and set
 * SpecificCharacterSet to "ISO_IR 192". After it, dicom_put_string() takes
 * UTF-8. -1 (ERROR_INPUT) if the character set cannot be converted.
 */
int dicom_convert_to_utf8(struct dicom_file *file, struct error *err);

/** A code: one item of a code sequence. */
struct dicom_code {
	const char *value;	/* CodeValue */
	const char *scheme;	/* CodingSchemeDesignator */
	const char *meaning;	/* CodeMeaning */
};

/**
 * Set the top-level sequence tag to one item per code (CodeValue,
 * CodingSchemeDesignator, CodeMeaning), replacing what was there.
 */
int dicom_put_code_sequence(struct dicom_file *file, uint32_t tag,
			  const struct dicom_code *codes, size_t count,
			  struct error *err);

/**
 * Add to the top-level code sequence tag an item per code it does not
 * already hold (same CodeValue and CodingSchemeDesignator), keeping the
 * items there; like dicom_put_code_sequence() when there is none.
 */
int dicom_append_code_sequence(struct dicom_file *file, uint32_t tag,
			     const struct dicom_code *codes, size_t count,
			     struct error *err);

/* ---- visiting every element, at every nesting level ---- */

enum dicom_visit_action {
	DCM_VISIT_KEEP = 0,	/* keep it (and descend if it is a sequence) */
	DCM_VISIT_REMOVE,	/* remove it (a sequence with all its items) */
};

typedef enum dicom_visit_action (*dicom_visitor)(void *ctx, struct dicom_elem *elem);

/**
 * Call fn for every element of the dataset in file order, depth first: a
 * sequence element first, then the elements of each of its items. The meta
 * header is not visited (group 0002 elements inside the dataset are). fn may change or empty the element it
 * is given (dicom_elem_*), nothing else of the file until the walk is over.
 * Returns 0, or -1 if the walk failed.
 */
int dicom_visit(struct dicom_file *file, dicom_visitor fn, void *ctx,
	      struct error *err);

uint32_t dicom_elem_tag(const struct dicom_elem *elem);
/** Two-letter VR ("PN", "SQ", "OB", ...). */
const char *dicom_elem_vr(const struct dicom_elem *elem);
/** 0 at top level, 1 inside an item of a top-level sequence, ... */
int dicom_elem_depth(const struct dicom_elem *elem);
/** Private creator of a private element ("" if none/not private). */
const char *dicom_elem_private_creator(const struct dicom_elem *elem);
/** The dictionary's keyword of the element's tag into buf ("" when no
 *  dictionary knows it); like dicom_keyword_from_tag() for a standard
 *  tag, with one dictionary look-up fewer. */
void dicom_elem_keyword(struct dicom_elem *elem, char *buf, size_t len);
/** Value as UTF-8; like dicom_get_string(). Not for SQ. */
int dicom_elem_get_string(struct dicom_elem *elem, char **utf8);
/** Replace the value; bytes stored as given. Not for SQ. */
int dicom_elem_put_string(struct dicom_elem *elem, const char *value,
			struct error *err);
/** A sequence: remove every item but the first (its elements are then
 *  visited as usual). */
int dicom_elem_keep_first_item(struct dicom_elem *elem, struct error *err);
/** Make the element zero length (for a sequence: remove all its items). */
int dicom_elem_empty(struct dicom_elem *elem, struct error *err);

/**
 * Remove the metadata segments (codestream.h) from every frame of
 * encapsulated JPEG, JPEG-LS or JPEG 2000 pixel data; the coded image
 * stays byte for byte. A frame split over fragments becomes one fragment,
 * the offset table is refilled if it was, an extended offset table goes.
 * *removed: how many segments went. -1 (ERROR_INPUT) when the pixel data
 * cannot be read or parsed: such data must not pass as clean.
 */
int dicom_strip_pixel_metadata(struct dicom_file *file, int *removed,
			       struct error *err);

/* ---- writing ---- */

/**
 * Write the object as a Part 10 file (preamble, new meta header) in its
 * original transfer syntax to the open, empty, writable descriptor fd. fd
 * stays open and is not synced. Fails with ERROR_TRANSIENT on write errors
 * (err->errnum set when known) and ERROR_INPUT when the object cannot be
 * encoded. A failure leaves partial bytes in fd: the caller discards them.
 */
int dicom_save_fd(struct dicom_file *file, int fd, struct error *err);

/**
 * Have dicom_save_fd() write a preamble of 128 zero bytes instead of the
 * source's: a preamble can carry anything, even an executable
 * (CVE-2019-11687). Counts as a change (dicom_bytes_reusable()).
 */
void dicom_zero_preamble(struct dicom_file *file);

/**
 * true when the file's own bytes can stand for what dicom_save_fd() would
 * write: nothing was changed since dicom_load(), and the object came with a
 * meta header that names its transfer syntax (not deflated). Its SOP UIDs
 * may disagree with the dataset's (dicom_meta_disagreement()): the bytes
 * are copied as they came. The caller then copies the source unchanged
 * (it must still check for a 128-byte preamble and "DICM" itself).
 */
bool dicom_bytes_reusable(const struct dicom_file *file);

/**
 * NULL when the meta header's MediaStorageSOPClassUID and
 * MediaStorageSOPInstanceUID equal the dataset's SOPClassUID and
 * SOPInstanceUID (or there is no meta header); otherwise a constant text
 * naming which differ (no values: safe for any log).
 */
const char *dicom_meta_disagreement(const struct dicom_file *file);

#ifdef __cplusplus
}
#endif

#endif
