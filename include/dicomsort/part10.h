/*
 * part10.h - the byte layout of a DICOM Part 10 file held in memory: an
 * index of its top-level elements, and a writer that splices new values
 * into the file's own bytes.
 *
 * Owns: the fast path of the DICOM adapter. Most files need only a few
 * top-level text values read (to sort them) and, under the seed profile, a
 * few changed; a full parse by DCMTK costs an allocation and a dictionary
 * lookup per element, more than all the file system work of a small file.
 * This reader walks the element headers once, checking the structure down
 * to the last byte, and only vouches for the plainest files: a 128-byte
 * preamble, "DICM", a well-formed meta header, a little endian
 * non-deflated dataset whose top-level tags ascend and whose elements,
 * sequences and items end exactly where their lengths say, the last one at
 * the end of the file. Anything else (-1) goes to DCMTK, which then also
 * decides what is wrong with it. The adapter (dicom.cpp) alone uses it.
 *
 * Values are never interpreted here: no character sets, no VR semantics
 * beyond the encoding of the header.
 */
#ifndef DICOMSORT_PART10_H
#define DICOMSORT_PART10_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dicomsort/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One top-level element: header at head, value at value, len bytes. */
struct part10_elem {
	uint32_t tag;
	char vr[3];		/* "" in an implicit VR dataset */
	size_t head;
	size_t value;
	uint32_t len;		/* 0 when undefined_length */
	bool undefined_length;	/* a sequence or encapsulated pixel data
				   ended by a delimiter */
};

struct part10 {
	const unsigned char *bytes;
	size_t size;
	/* From the meta header, trailing NUL/space padding removed; "" when
	 * absent or longer than a UID may be. */
	char syntax[65];
	char media_class[65];
	char media_instance[65];
	size_t dataset;		/* offset of the dataset's first element */
	bool implicit;
	bool group_lengths;	/* the dataset has (gggg,0000) elements */
	struct part10_elem *top;
	size_t count;
};

/**
 * Read the meta header of the size bytes at bytes (kept, not copied, until
 * part10_free()). 0: p->syntax and the media UIDs are set, the caller may
 * now call part10_index(); -1: not a file this reader vouches for.
 */
int part10_open(struct part10 *p, const unsigned char *bytes, size_t size);

/* In an implicit VR dataset, whether tag is a sequence (the dictionary's
 * word: the stream does not say). */
typedef bool (*part10_is_sequence_fn)(uint32_t tag);

/**
 * Index the dataset's top-level elements, encoded as implicit or explicit
 * VR little endian (the caller knows which from p->syntax). 0: p->top holds
 * p->count elements in ascending tag order; -1: not vouched for (also when
 * out of memory).
 */
int part10_index(struct part10 *p, bool implicit, part10_is_sequence_fn is_sequence);

/* The indexed element with tag, or NULL. */
const struct part10_elem *part10_find(const struct part10 *p, uint32_t tag);

/* A replacement value of a top-level element, already padded to even
 * length as its VR wants. */
struct part10_edit {
	const struct part10_elem *elem;
	const char *value;
	size_t len;
};

/**
 * Write the file to fd with the edits (ascending by element, each element
 * at most once) spliced in; everything else is the file's own bytes. Only
 * elements of defined length with a VR of short or long text form can be
 * edited (the caller checks); p->group_lengths must be false if any edit
 * changes a length. -1 with ERROR_TRANSIENT when writing fails.
 */
int part10_write(const struct part10 *p, const struct part10_edit *edits,
		 size_t count, int fd, struct error *err);

void part10_free(struct part10 *p);

/** Whether the two-letter VR at vr has, in an explicit VR header, two
 *  reserved bytes and a 32-bit length (OB, SQ, UT, ...). */
bool part10_long_vr(const unsigned char *vr);

#ifdef __cplusplus
}
#endif

#endif
