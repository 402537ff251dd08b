/*
 * correlation.h - the PatientID correlation table (old ID -> new ID).
 *
 * Owns: parsing the original tool's table format and answering lookups.
 * Format: one "old new" pair per line, the two fields separated by a comma,
 * spaces or tabs (runs of them count as one separator). Also accepted: CRLF
 * line ends, a UTF-8 byte order mark, blank lines and lines whose first
 * non-blank character is '#'. A line with one field or more than two, or an
 * old ID mapped to two different new IDs, is an error naming file and line.
 * The same pair given twice is fine.
 *
 * A table is built completely by correlation_load() and never changes after,
 * so a reload builds a new one and swaps the pointer: readers hold a
 * reference (correlation_ref) for as long as they use it. Lookups are O(1)
 * (hash table) and safe from any number of threads.
 */
#ifndef DICOMSORT_CORRELATION_H
#define DICOMSORT_CORRELATION_H

#include <stddef.h>

#include "dicomsort/error.h"

struct correlation;

/** Parse the file at path into a new table with one reference. On error -1,
 *  ERROR_SETUP, message "PATH:LINE: what is wrong" (or "PATH: strerror"). */
int correlation_load(struct correlation **out, const char *path, struct error *err);

/** The new ID for old_id, or NULL when the table does not map it. The
 *  string lives as long as the table. */
const char *correlation_lookup(const struct correlation *table, const char *old_id);

/** Number of distinct old IDs. */
size_t correlation_size(const struct correlation *table);

/** Take one more reference; returns table. Atomic. */
struct correlation *correlation_ref(struct correlation *table);

/** Drop a reference; the last one frees the table. NULL is fine. */
void correlation_unref(struct correlation *table);

#endif
