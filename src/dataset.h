/*
 * dataset.h - a DICOM dataset held as a compact element tree over the
 * file's own bytes: the C backend of the DICOM adapter (issue 14).
 *
 * Owns: deciding whether a file is plain enough for the C backend to stand
 * for DCMTK on it, the tree built by one part10_walk() of its bytes (values
 * referenced in place, never copied), and writing it exactly as DCMTK's
 * re-encode through dicom_save_fd() would: preamble, a fresh meta header,
 * every sequence and item of undefined length, text values stripped of
 * trailing padding and padded to even length.
 *
 * Why a second backend and not a second rule engine: de-identification
 * (deid.c) talks to DICOM only through dicom.h; the same rules then run
 * over either backend, and a differential test (tests/unit/test_dataset.c)
 * holds the two to the same bytes. A file is wholly C or wholly DCMTK;
 * ds_open() claims only what it can reproduce exactly and declines the
 * rest (DCMTK's), so a decline is never an error.
 *
 * Claimed today: a 128-byte preamble, "DICM", a meta header naming
 * explicit VR little endian (exactly "1.2.840.10008.1.2.1"), a dataset
 * that a strict walk follows to its last byte, whose elements ascend in
 * every item, with PS3.5 VRs but UN and the floats (FL, FD, OF, OD: their
 * text is DCMTK's own ftoa()'s), no group length, no encapsulated
 * pixel data, no binary value of odd length or partial word, no sequence
 * before SOPInstanceUID, a SOPClassUID and SOPInstanceUID of VR UI with a
 * first value and not a UID's "=Name", private creators of a text VR, and a SpecificCharacterSet
 * (top level) the C backend converts exactly: none, ISO_IR 6, ISO_IR 100
 * (Latin-1) or ISO_IR 192 (UTF-8), at the top level only. Private to
 * src/: dicom.cpp hands it a file leaving the fast path (part10.h) when
 * it claims the bytes (DICOMSORT_TEST_BACKEND=dcmtk, test-only: never).
 */
#ifndef DICOMSORT_DATASET_H
#define DICOMSORT_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dicomsort/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What DCMTK 3.6.7 writes into a new meta header (dcuid.h); dicom.cpp
 * checks at compile time that the DCMTK it is built with says the same. */
#define DS_IMPLEMENTATION_CLASS_UID "1.2.276.0.7230010.3.0.3.6.7"
#define DS_IMPLEMENTATION_VERSION "OFFIS_DCMTK_367"

struct ds_file;

/* ds_open()'s answers besides 0 (claimed). */
#define DS_DECLINED 1		/* not one the C backend vouches for */
#define DS_NO_MEMORY (-1)

/**
 * Build the tree of the size bytes at bytes (kept, not copied: they must
 * outlive *out). 0: *out is the file; DS_DECLINED: DCMTK's to read;
 * DS_NO_MEMORY. *out is NULL unless 0.
 */
int ds_open(struct ds_file **out, const unsigned char *bytes, size_t size);

void ds_free(struct ds_file *f);

/**
 * Write the file as DCMTK's dicom_save_fd() would, to fd (empty,
 * writable; not synced), with 128 zero bytes as its preamble when
 * zero_preamble. -1 with ERROR_TRANSIENT when writing fails, ERROR_INPUT
 * when out of memory is not the cause but the object cannot be encoded.
 */
int ds_save_fd(const struct ds_file *f, int fd, bool zero_preamble,
	       struct error *err);

/**
 * The data dictionary's word on a tag asked without a private creator
 * (DCMTK's dicom.dic and private.dic compiled into src/dict_tags.h by
 * scripts/gen-dict-tags: no DCMTK, no lock): its keyword, and in *vr its
 * VR as DCMTK names it (internal ones included: "xs", "ox", ...). NULL
 * and "??" (DcmTag's answer: no VR) when no entry has the tag; a reader
 * then takes the element for UN, as DCMTK does.
 */
const char *ds_dictionary(uint32_t tag, const char **vr);

/**
 * The tag whose keyword is keyword, from the same tables, where the answer
 * is DCMTK's DcmTag::findTagFromName() beyond doubt: 1 and *tag when
 * exactly one entry in an even group has that keyword, a plain one (DCMTK
 * prefers it to any odd-group or repeating entry); 0 otherwise (none,
 * several, a "gggg,eeee" form): ask DCMTK. What a layout template names
 * is then known without DCMTK's dictionary being loaded.
 */
int ds_tag_from_keyword(const char *keyword, uint32_t *tag);

/* ---- visiting: what dicom_visit() and dicom_elem_*() answer ---- */

struct ds_elem;		/* an element met by ds_visit(); valid in the callback */

/* A visitor's answers (dicom.h's DCM_VISIT_KEEP and _REMOVE); anything
 * else stops the walk. */
#define DS_VISIT_KEEP 0
#define DS_VISIT_REMOVE 1
typedef int (*ds_visitor)(void *ctx, struct ds_elem *elem);

/** Every element in file order, depth first, as dicom_visit(): a visitor
 *  may change the element it is given (ds_elem_put_string(), _empty(),
 *  _keep_first_item()) or have it removed. 0 or -1 (stopped, or out of
 *  memory). */
int ds_visit(struct ds_file *f, ds_visitor fn, void *ctx);

uint32_t ds_elem_tag(const struct ds_elem *elem);
const char *ds_elem_vr(const struct ds_elem *elem);
int ds_elem_depth(const struct ds_elem *elem);
const char *ds_elem_private_creator(const struct ds_elem *elem);
/* A private element's keyword comes from the dictionary's entries for
 * its creator, as DCMTK names the creator (not quite the adapter's). */
void ds_elem_keyword(const struct ds_elem *elem, char *buf, size_t len);
/** As dicom_elem_get_string(): 1 and *utf8 (malloc'd), -1 for a sequence
 *  or out of memory. */
int ds_elem_get_string(const struct ds_elem *elem, char **utf8);

/** As dicom_get_string() (convert) and dicom_get_raw(): a top-level
 *  value; 1 present, 0 absent, -1 a sequence or out of memory. */
int ds_get_string(const struct ds_file *f, uint32_t tag, bool convert, char **out);

/** As dicom_elem_put_string(): text as DCMTK's putString() keeps it; a
 *  binary value only as zeros ("0\\0...") or "" (dicom.cpp has DCMTK
 *  parse other text for a binary element: ds_elem_put_bytes()), and a
 *  UID's "=Name" not at all (-1, ERROR_INPUT: not yet the C backend's). */
int ds_elem_put_string(struct ds_elem *elem, const char *value, struct error *err);
/** A binary element's new value: len bytes (little endian, even length),
 *  what DCMTK holds after its putString() of the text (dicom.cpp has
 *  DCMTK parse it). -1 (ERROR_INPUT) for a text element or a sequence. */
int ds_elem_put_bytes(struct ds_elem *elem, const void *bytes, size_t len,
		      struct error *err);
/** As dicom_elem_empty() (a sequence loses its items). */
int ds_elem_empty(struct ds_elem *elem, struct error *err);
/** As dicom_elem_keep_first_item(). */
int ds_elem_keep_first_item(struct ds_elem *elem, struct error *err);
/** As dicom_put_string() (DCMTK's putAndInsertString()): a new element
 *  of the dictionary's VR in its place in tag order, replacing any element
 *  with the tag, whatever its VR (a sequence too); -1 (ERROR_INPUT) for
 *  what the C backend does not do yet (a VR such as "xs", a character set
 *  it does not convert). */
int ds_put_string(struct ds_file *f, uint32_t tag, const char *value,
		  struct error *err);
/** As putString() on the top-level element with the tag, its VR kept
 *  (the fast path's edits replayed, as promote() does on DCMTK): -1 when
 *  there is no such value. */
int ds_set_string(struct ds_file *f, uint32_t tag, const char *value,
		  struct error *err);
/** As dicom_empty() and dicom_delete(): top level, if present. */
int ds_empty(struct ds_file *f, uint32_t tag, struct error *err);
int ds_delete(struct ds_file *f, uint32_t tag);

/** As dicom_convert_to_utf8(): every PN, SH, LO, LT, ST, UT and UC value
 *  converted, SpecificCharacterSet then ISO_IR 192; -1 (ERROR_INPUT)
 *  when a value is not in the declared set (nothing changed then). */
int ds_convert_to_utf8(struct ds_file *f, struct error *err);

struct dicom_code;
/** As dicom_put_code_sequence() and dicom_append_code_sequence(). */
int ds_put_code_sequence(struct ds_file *f, uint32_t tag,
			 const struct dicom_code *codes, size_t count,
			 struct error *err);
int ds_append_code_sequence(struct ds_file *f, uint32_t tag,
			    const struct dicom_code *codes, size_t count,
			    struct error *err);

/* ds_meta_disagreement()'s bits. */
#define DS_META_CLASS 1
#define DS_META_INSTANCE 2
/** Which of the source's meta header SOP UIDs differ from the dataset's
 *  top-level ones (as dicom_meta_disagreement() compares them for a file
 *  DCMTK holds): DS_META_CLASS, DS_META_INSTANCE or both; 0 when both
 *  agree. The tree as it is now: ask before changing the SOP UIDs. */
unsigned ds_meta_disagreement(const struct ds_file *f);

/** Whether anything was changed since ds_open(). */
bool ds_modified(const struct ds_file *f);

/* For tests and benchmarks: elements in the tree (items not counted). */
size_t ds_element_count(const struct ds_file *f);

#ifdef __cplusplus
}
#endif

#endif
