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
 * decides what is wrong with it. The adapter (dicom.cpp) alone uses it:
 * this header is private to src/ (tests and fuzz targets reach it through
 * their include path).
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
#include "dicomsort/tag.h"

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
	uint64_t file_size;	/* of the file indexed; more than size when
				   bytes hold only its head (part10_index_fd()) */
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

/* The data dictionary's answer (DCMTK's dicom.dic, compiled into a table
 * by scripts/gen-sq-tags: no DCMTK, no lock): tag is an SQ there. Asked
 * without a private creator, as DcmTag(group, element) is, so a private
 * tag is never a sequence by the dictionary's word. */
bool part10_dictionary_sequence(uint32_t tag);

/**
 * Index the dataset's top-level elements, encoded as implicit or explicit
 * VR little endian (the caller knows which from p->syntax); is_sequence
 * NULL: part10_dictionary_sequence(). A strict part10_walk() of the bytes.
 * 0: p->top holds p->count elements in ascending tag order; -1: not
 * vouched for (also when out of memory).
 */
int part10_index(struct part10 *p, bool implicit, part10_is_sequence_fn is_sequence);

/**
 * part10_index() of a file of which p holds only the head (part10_open()
 * of its first bytes): the rest is walked from fd, a regular file of size
 * bytes, through a small window with pread(2) - element headers read,
 * large values (pixel data) skipped by offset, not read - and checked as
 * strictly, to its last byte. The values of p->top past the head are not
 * in memory; part10_write() refuses such an index.
 */
int part10_index_fd(struct part10 *p, int fd, uint64_t size, bool implicit,
		    part10_is_sequence_fn is_sequence);

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
 * changes a length. -1 with ERROR_TRANSIENT when writing fails (and with
 * ERROR_INPUT, writing nothing, when p holds only the file's head).
 */
int part10_write(const struct part10 *p, const struct part10_edit *edits,
		 size_t count, int fd, struct error *err);

void part10_free(struct part10 *p);

/* ---- the element walker ----
 *
 * The one reader of element headers in the tree: the index above, the
 * limits checked before DCMTK parses (part10_check_limits()) and the fuzz
 * target walk the bytes with it. It reads headers and skips values; it
 * never keeps a value. A source is either memory or a descriptor read(2)
 * sequentially through a bounded window (so a pipe works too); a deflated
 * dataset is inflated into that window.
 */

#define PART10_UNDEFINED 0xffffffffu
#define PART10_SIZE_UNKNOWN UINT64_MAX
/* The window holds at least this much (a 132-byte preamble, a meta UID). */
#define PART10_MIN_WINDOW 512

struct part10_source {
	const unsigned char *bytes;	/* memory, size bytes; NULL: fd */
	int fd;			/* read from its current position on */
	uint64_t size;		/* bytes in the source (fd: PART10_SIZE_UNKNOWN
				   reads until EOF) */
	size_t window;		/* fd or deflated: bytes buffered, 0: 64 KiB;
				   at least PART10_MIN_WINDOW */
	/* fd a regular file of size bytes, read with pread(2) from its
	 * start, its offset never used: a value skipped costs no system
	 * call. Its first held bytes are at head already (the caller read
	 * them): taken from there, not read again. */
	bool positional;
	const unsigned char *head;
	size_t held;
};

/* How the dataset is encoded, and how much the walk forgives. */
#define PART10_IMPLICIT 0x1u	/* implicit VR */
#define PART10_BIG 0x2u		/* big endian */
#define PART10_DEFLATED 0x4u	/* deflated (RFC 1951, no header) */
/* Strict: every value, item and sequence ends exactly where its length
 * says, inside its container and the source; items hold elements only
 * and sequences items only; VRs are PS3.5's; an undefined length is a
 * sequence's or the pixel data's. Without it the walk goes on through
 * whatever it can still follow (uppercase VRs, lengths past their
 * container), as the limits check must: a nesting bomb hides behind the
 * first oddity otherwise. */
#define PART10_STRICT 0x8u

enum part10_node {
	PART10_ELEMENT,		/* a value, skipped */
	PART10_SEQUENCE,	/* items follow (SQ, UN or implicit of
				   undefined length, the dictionary's SQ) */
	PART10_FRAGMENTS,	/* encapsulated pixel data: fragments follow */
	PART10_ITEM,		/* (FFFE,E000) in a sequence */
	PART10_FRAGMENT,	/* (FFFE,E000) in encapsulated pixel data */
	PART10_ITEM_END,	/* (FFFE,E00D) */
	PART10_SEQUENCE_END,	/* (FFFE,E0DD) */
};

/* One element header, as part10_walk() meets it. */
struct part10_header {
	uint32_t tag;
	char vr[3];		/* as written; "" in implicit VR, for items */
	uint32_t len;		/* PART10_UNDEFINED: ended by a delimiter */
	uint32_t prev;		/* tag of the element before it in its item
				   (or at the top level); 0 for the first */
	uint64_t offset;	/* of the header in the stream: the file's
				   offset; past a deflated dataset's start,
				   that start plus the inflated bytes */
	unsigned header_len;	/* 8 or 12; the value follows */
	unsigned depth;		/* sequences (and pixel data) around it */
	enum part10_node node;
	bool in_item;		/* an element of an item or the top level, not
				   one loose in a sequence (lenient walk) */
};

/* Called per header; nonzero stops the walk, which returns that value. */
typedef int (*part10_walk_fn)(void *ctx, const struct part10_header *h);

/* part10_walk()'s own results, besides 0 and a callback's value. */
#define PART10_WALK_MALFORMED (-1)	/* not a structure it can follow */
#define PART10_WALK_TOO_DEEP (-2)	/* nesting beyond its stack */
#define PART10_WALK_FAILED (-3)		/* read(2) failed, out of memory */

/**
 * Walk the dataset that starts start bytes into src, encoded as how says;
 * is_sequence NULL: part10_dictionary_sequence(). fn gets every header in
 * stream order. 0 when the dataset ends cleanly at the end of the source
 * (the end of the inflated stream when deflated), a callback's nonzero
 * value, or a PART10_WALK_* error. Reads only what it walks: a callback
 * that stops early leaves the rest unread.
 */
int part10_walk(const struct part10_source *src, uint64_t start, unsigned how,
		part10_is_sequence_fn is_sequence, part10_walk_fn fn, void *ctx);

/**
 * A whole file as DCMTK would take it: a preamble and meta header, a meta
 * header alone, or a bare dataset (its encoding guessed from its first
 * header); the transfer syntax from the meta header decides the rest. A
 * lenient part10_walk() of the dataset; a meta header it cannot read is
 * PART10_WALK_MALFORMED.
 */
int part10_walk_file(const struct part10_source *src, part10_walk_fn fn, void *ctx);

enum part10_limit {
	PART10_WITHIN_LIMITS,	/* also: the walk gave up (DCMTK decides) */
	PART10_TOO_DEEP,	/* sequences nested beyond DICOM_MAX_DEPTH */
	PART10_UNORDERED,	/* more than DICOM_MAX_UNORDERED elements below
				   their predecessor in the same item */
};

/* What dicom_load() checks before DCMTK parses a file: a part10_walk_file()
 * that counts nesting and order. Only a clear answer refuses. */
enum part10_limit part10_check_limits(const struct part10_source *src);

/** Whether the two-letter VR at vr has, in an explicit VR header, two
 *  reserved bytes and a 32-bit length (OB, SQ, UT, ...). */
bool part10_long_vr(const unsigned char *vr);

#ifdef __cplusplus
}
#endif

#endif
