/*
 * fuzz_layout.c - the template parser and the path sanitizer (layout.h).
 *
 * Input: a template, then NUL-separated values handed out for the
 * placeholders in turn. Whatever they are, an expanded path must be
 * relative, made of non-empty components of at most 255 bytes with no
 * leading dot (so no "." or ".."); when the template's own text is plain
 * printable ASCII, also free of control characters, backslashes and invalid
 * UTF-8 (literal text is the administrator's choice, values are not).
 * layout_sanitize_component() must obey the strict rules in any buffer size.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dicomsort/layout.h"
#include "fuzz_common.h"

struct values {
	const char *parts[64];
	size_t count, next;
	unsigned calls;
};

static const char *next_value(void *ctx, const char *keyword)
{
	struct values *v = ctx;

	(void)keyword;
	v->calls++;
	if (v->count == 0)
		return NULL;
	if (v->next >= v->count) {	/* some placeholders are absent */
		v->next = 0;
		return NULL;
	}
	return v->parts[v->next++];
}

/* Length of the UTF-8 character at s (at most len bytes), 0 if invalid. */
static size_t utf8_char(const unsigned char *s, size_t len)
{
	size_t n;
	unsigned cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (n > len)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

static void check_component(const char *c, size_t len, const char *what,
			    bool strict)
{
	if (len == 0 || len > LAYOUT_COMPONENT_MAX || c[0] == '.') {
		fprintf(stderr, "bad %s component '%.*s' (%zu bytes)\n", what,
			(int)len, c, len);
		abort();
	}
	for (size_t i = 0; strict && i < len;) {
		unsigned char ch = (unsigned char)c[i];
		size_t n;

		if (ch < 0x20 || ch == 0x7f || ch == '/' || ch == '\\') {
			fprintf(stderr, "%s component has byte 0x%02x\n", what, ch);
			abort();
		}
		n = utf8_char((const unsigned char *)c + i, len - i);
		if (n == 0) {
			fprintf(stderr, "%s component has invalid UTF-8 at %zu\n",
				what, i);
			abort();
		}
		i += n;
	}
}

static void check_path(const char *path, bool strict)
{
	const char *p = path;

	if (path[0] == '\0' || path[0] == '/') {
		fprintf(stderr, "bad path '%s'\n", path);
		abort();
	}
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);

		check_component(p, len, "path", strict);
		if (slash == NULL)
			break;
		p = slash + 1;
	}
}

static void sanitize_all_sizes(const char *value)
{
	static const size_t sizes[] = { 1, 2, 3, 4, 5, 8, 17, 256, 300 };
	char out[300];

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		for (int sd = 0; sd < 2; sd++) {
			size_t len;

			memset(out, 'X', sizeof(out));
			layout_sanitize_component(value, sd, out, sizes[i]);
			len = strnlen(out, sizes[i]);
			if (len == sizes[i]) {
				fprintf(stderr, "sanitize: no NUL in %zu bytes\n",
					sizes[i]);
				abort();
			}
			/* A buffer too small for "UNKNOWN" may hold less;
			 * what it holds must still be safe. */
			if (len > 0)
				check_component(out, len, "sanitized", true);
			else if (sizes[i] > 8) {
				fprintf(stderr, "sanitize: empty result\n");
				abort();
			}
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1);
	struct values v = { .count = 0 };
	struct layout *layout = NULL;
	struct error err = ERROR_INIT;
	char out[4096 + 1];
	size_t off;
	bool strict = true;

	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	off = strlen(buf) + 1;
	while (off <= size && v.count < 64) {
		v.parts[v.count++] = buf + off;
		off += strlen(buf + off) + 1;
	}
	for (size_t i = 0; i < v.count; i++)
		sanitize_all_sizes(v.parts[i]);
	sanitize_all_sizes(buf);

	for (const char *p = buf; *p; p++)
		if (*p < 0x20 || *p > 0x7e || *p == '\\')
			strict = false;
	if (layout_compile(&layout, buf, &err) == 0) {
		size_t n = layout_placeholder_count(layout);

		for (size_t i = 0; i < n; i++)
			if (layout_placeholder(layout, i) == NULL)
				abort();
		if (layout_component_count(layout) < 1)
			abort();
		if (layout_expand(layout, next_value, &v, out, sizeof(out),
				  &err) == 0)
			check_path(out, strict);
		/* Small buffers: an error, or a safe path. */
		for (size_t len = 1; len < 64; len += 7) {
			v.next = 0;
			if (layout_expand(layout, next_value, &v, out, len,
					  &err) == 0) {
				if (strnlen(out, len) == len)
					abort();
				check_path(out, strict);
			}
		}
		layout_free(layout);
	}
	free(buf);
	return 0;
}
