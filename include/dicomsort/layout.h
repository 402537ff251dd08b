/*
 * layout.h - building safe relative paths from templates and DICOM values.
 *
 * Owns: the template language and path sanitizing. Knows nothing of DICOM
 * files: values come from a caller-supplied function.
 *
 * A template is literal text with {Keyword} placeholders, e.g. the default
 * "{PatientID}/{StudyDate}/{SeriesNumber}_{SeriesDescription}/". '/' in the
 * template separates path components; a trailing '/' is ignored. "{{" and
 * "}}" are literal braces.
 *
 * Each substituted value is sanitized like the original tool did, and more:
 *   - a missing or empty value (after trimming spaces) becomes "UNKNOWN";
 *   - spaces become '_'; '*' and  < > : " / \ | ?  are removed;
 *   - in SeriesDescription, '.' becomes '_' (the original's rule);
 *   - control characters (0x00-0x1f, 0x7f) are removed, invalid UTF-8 bytes
 *     become '_'.
 * Then every resulting component is checked: empty becomes "UNKNOWN",
 * leading dots become '_' (so no "." or "..", no hidden folder, nothing
 * that looks like our temp files), and it is cut to at most 255 bytes on a
 * UTF-8 character boundary.
 * So an expanded path is always relative, has no "." or ".." component and
 * can never leave the directory it is joined to.
 */
#ifndef DICOMSORT_LAYOUT_H
#define DICOMSORT_LAYOUT_H

#include <stddef.h>

#include "dicomsort/error.h"

#define LAYOUT_DEFAULT_DIRS "{PatientID}/{StudyDate}/{SeriesNumber}_{SeriesDescription}/"
#define LAYOUT_COMPONENT_MAX 255

struct layout;

/**
 * Returns the value of keyword for the object being placed, as UTF-8, or
 * NULL when absent. The string must stay valid until the next call.
 */
typedef const char *(*layout_value_fn)(void *ctx, const char *keyword);

/** Parse tmpl. -1 (ERROR_SETUP) on an unbalanced brace or empty
 *  placeholder. */
int layout_compile(struct layout **out, const char *tmpl, struct error *err);

void layout_free(struct layout *layout);

/** Number of placeholders, and the keyword of the i-th one. Callers use
 *  them to check every keyword exists in the DICOM dictionary. */
size_t layout_placeholder_count(const struct layout *layout);
const char *layout_placeholder(const struct layout *layout, size_t i);

/** Number of path components the template yields (>= 1). */
size_t layout_component_count(const struct layout *layout);

/**
 * Expand into out (NUL-terminated relative path, components joined by '/',
 * no leading or trailing '/'). -1 (ERROR_INPUT) only if out is too small.
 */
int layout_expand(const struct layout *layout, layout_value_fn get, void *ctx,
		  char *out, size_t outlen, struct error *err);

/**
 * Sanitize one value into out as described above, as a single path
 * component (so '/' is removed). series_description applies the '.' rule.
 */
void layout_sanitize_component(const char *value, int series_description,
			       char *out, size_t outlen);

#endif
