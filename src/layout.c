/* layout.c - templates and path sanitizing; see layout.h. */
#include "dicomsort/layout.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define UNKNOWN_VALUE "UNKNOWN"

enum part_kind {
	PART_TEXT,		/* literal text, checked at compile time */
	PART_VALUE,		/* a {Keyword} */
	PART_BREAK,		/* a '/' between components */
};

struct part {
	enum part_kind kind;
	char *text;		/* the literal, or the keyword */
	bool series_description;
};

struct layout {
	struct part *parts;
	size_t nparts;
	size_t partcap;
	const char **keywords;	/* point into parts[].text */
	size_t nkeywords;
	size_t ncomponents;
};

/* Literal text being gathered between placeholders and breaks. */
struct strbuf {
	char *s;
	size_t len;
	size_t cap;
};

/*
 * The expansion being written. Bytes beyond a component's limit are
 * dropped (that is the cut); bytes beyond the buffer make it overflow,
 * which layout_expand() reports.
 */
struct writer {
	char *buf;
	size_t cap;		/* usable bytes, the NUL not counted */
	size_t len;
	size_t start;		/* of the current component */
	size_t limit;		/* bytes a component may have */
	bool full;		/* the current component reached its limit */
	bool overflow;
};

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs,
 * no surrogates, nothing above U+10FFFF), 0 if s starts none. */
static size_t utf8_len(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4;
	else
		return 0;
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

static bool is_control(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

/* What the original removed, plus control characters. */
static bool is_removed(unsigned char c)
{
	if (is_control(c))
		return true;
	switch (c) {
	case '*': case '<': case '>': case ':': case '"':
	case '/': case '\\': case '|': case '?':
		return true;
	default:
		return false;
	}
}

static bool is_keyword_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9');
}

/* ---- compiling ---- */

static int sb_add(struct strbuf *sb, const char *s, size_t n)
{
	if (sb->len + n + 1 > sb->cap) {
		size_t cap = sb->cap ? sb->cap * 2 : 64;
		char *p;

		while (cap < sb->len + n + 1)
			cap *= 2;
		p = realloc(sb->s, cap);
		if (p == NULL)
			return -1;
		sb->s = p;
		sb->cap = cap;
	}
	memcpy(sb->s + sb->len, s, n);
	sb->len += n;
	sb->s[sb->len] = '\0';
	return 0;
}

static int add_part(struct layout *l, enum part_kind kind, const char *text,
		    size_t len)
{
	struct part *p;

	if (l->nparts == l->partcap) {
		size_t cap = l->partcap ? l->partcap * 2 : 8;

		p = realloc(l->parts, cap * sizeof(*p));
		if (p == NULL)
			return -1;
		l->parts = p;
		l->partcap = cap;
	}
	p = &l->parts[l->nparts];
	p->kind = kind;
	p->text = NULL;
	p->series_description = false;
	if (text != NULL && (p->text = strndup(text, len)) == NULL)
		return -1;
	if (kind == PART_VALUE)
		p->series_description = strcmp(p->text, "SeriesDescription") == 0;
	l->nparts++;
	return 0;
}

static int oom(struct error *err)
{
	return error_set(err, ERROR_SETUP, ENOMEM, "template");
}

/* The gathered literal, if any, becomes a part. */
static int flush_text(struct layout *l, struct strbuf *sb, struct error *err)
{
	if (sb->len == 0)
		return 0;
	if (add_part(l, PART_TEXT, sb->s, sb->len) == -1)
		return oom(err);
	sb->len = 0;
	return 0;
}

/* *pp is at a '{' that does not start "{{". */
static int compile_placeholder(struct layout *l, const char *tmpl,
			       const char **pp, struct error *err)
{
	const char *start = *pp + 1;
	const char *end = start;

	while (is_keyword_char(*end))
		end++;
	if (*end == '}' && end > start) {
		if (add_part(l, PART_VALUE, start, (size_t)(end - start)) == -1)
			return oom(err);
		*pp = end + 1;
		return 0;
	}
	if (*end == '}')
		return error_set(err, ERROR_SETUP, 0,
				 "template '%s': empty placeholder '{}'", tmpl);
	end = strchr(end, '}');
	if (end == NULL)
		return error_set(err, ERROR_SETUP, 0, "template '%s': '{' without "
				 "'}' (write '{{' for a literal brace)", tmpl);
	return error_set(err, ERROR_SETUP, 0, "template '%s': '{%.*s}' is not a "
			 "DICOM keyword (letters and digits only)", tmpl,
			 (int)(end - start), start);
}

/* Runs of '/' are one break; leading and trailing ones add nothing, so
 * the expansion is always relative and never has an empty component. */
static int compile_break(struct layout *l, const char **pp, struct error *err)
{
	const char *p = *pp;

	while (*p == '/')
		p++;
	*pp = p;
	if (*p == '\0' || l->nparts == 0)
		return 0;
	if (add_part(l, PART_BREAK, NULL, 0) == -1)
		return oom(err);
	l->ncomponents++;
	return 0;
}

/* Literal text is the administrator's, but a tab or a stray Latin-1 byte
 * in a folder name is never what they meant: say so now. */
static int compile_char(struct strbuf *sb, const char *tmpl, const char **pp,
			struct error *err)
{
	size_t n = utf8_len(*pp);

	if (n == 0)
		return error_set(err, ERROR_SETUP, 0,
				 "template '%s': not valid UTF-8", tmpl);
	if (n == 1 && is_control((unsigned char)**pp))
		return error_set(err, ERROR_SETUP, 0, "template '%s': control "
				 "character 0x%02x", tmpl, (unsigned char)**pp);
	if (sb_add(sb, *pp, n) == -1)
		return oom(err);
	*pp += n;
	return 0;
}

static int compile_parts(struct layout *l, const char *tmpl, struct strbuf *sb,
			 struct error *err)
{
	const char *p = tmpl;
	int rc = 0;

	while (rc == 0 && *p != '\0') {
		if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
			if (sb_add(sb, p, 1) == -1)
				return oom(err);
			p += 2;
		} else if (*p == '{') {
			if ((rc = flush_text(l, sb, err)) == 0)
				rc = compile_placeholder(l, tmpl, &p, err);
		} else if (*p == '}') {
			rc = error_set(err, ERROR_SETUP, 0, "template '%s': '}' "
				       "without '{' (write '}}' for a literal "
				       "brace)", tmpl);
		} else if (*p == '/') {
			if ((rc = flush_text(l, sb, err)) == 0)
				rc = compile_break(l, &p, err);
		} else {
			rc = compile_char(sb, tmpl, &p, err);
		}
	}
	if (rc == 0)
		rc = flush_text(l, sb, err);
	return rc;
}

static int index_keywords(struct layout *l, struct error *err)
{
	for (size_t i = 0; i < l->nparts; i++)
		if (l->parts[i].kind == PART_VALUE)
			l->nkeywords++;
	if (l->nkeywords == 0)
		return 0;
	l->keywords = calloc(l->nkeywords, sizeof(*l->keywords));
	if (l->keywords == NULL)
		return oom(err);
	for (size_t i = 0, k = 0; i < l->nparts; i++)
		if (l->parts[i].kind == PART_VALUE)
			l->keywords[k++] = l->parts[i].text;
	return 0;
}

int layout_compile(struct layout **out, const char *tmpl, struct error *err)
{
	struct layout *l = calloc(1, sizeof(*l));
	struct strbuf sb = { NULL, 0, 0 };
	int rc;

	if (l == NULL)
		return oom(err);
	l->ncomponents = 1;
	rc = compile_parts(l, tmpl, &sb, err);
	free(sb.s);
	if (rc == 0)
		rc = index_keywords(l, err);
	if (rc == -1) {
		layout_free(l);
		return -1;
	}
	*out = l;
	return 0;
}

void layout_free(struct layout *layout)
{
	if (layout == NULL)
		return;
	for (size_t i = 0; i < layout->nparts; i++)
		free(layout->parts[i].text);
	free(layout->parts);
	free(layout->keywords);
	free(layout);
}

size_t layout_placeholder_count(const struct layout *layout)
{
	return layout->nkeywords;
}

const char *layout_placeholder(const struct layout *layout, size_t i)
{
	return i < layout->nkeywords ? layout->keywords[i] : NULL;
}

size_t layout_component_count(const struct layout *layout)
{
	return layout->ncomponents;
}

/* ---- expanding ---- */

static void writer_init(struct writer *w, char *buf, size_t buflen,
			size_t limit)
{
	w->buf = buf;
	w->cap = buflen > 0 ? buflen - 1 : 0;
	w->len = 0;
	w->start = 0;
	w->limit = limit;
	w->full = false;
	w->overflow = buflen == 0;
}

/* One whole character (n bytes): it fits in the component or the
 * component ends before it, so a cut never splits a character. */
static void put(struct writer *w, const char *s, size_t n)
{
	if (w->full || w->overflow)
		return;
	if (w->len - w->start + n > w->limit) {
		w->full = true;
		return;
	}
	if (w->len + n > w->cap) {
		w->overflow = true;
		return;
	}
	memcpy(w->buf + w->len, s, n);
	w->len += n;
}

static void put_ascii(struct writer *w, const char *s)
{
	for (; *s != '\0'; s++)
		put(w, s, 1);
}

/* Compiled text is valid UTF-8 without control characters. */
static void put_text(struct writer *w, const char *s)
{
	while (*s != '\0') {
		size_t n = utf8_len(s);

		put(w, s, n);
		s += n;
	}
}

static void put_value(struct writer *w, const char *value,
		      bool series_description)
{
	const char *s = value != NULL ? value : "";
	size_t len;

	/* DICOM pads with spaces; they are not part of the value. */
	while (*s == ' ')
		s++;
	len = strlen(s);
	while (len > 0 && s[len - 1] == ' ')
		len--;
	if (len == 0) {
		put_ascii(w, UNKNOWN_VALUE);
		return;
	}
	for (size_t i = 0; i < len;) {
		/* A trimmed space is no continuation byte: no overrun. */
		size_t n = utf8_len(s + i);
		unsigned char c = (unsigned char)s[i];

		if (n == 0)
			put(w, "_", 1);
		else if (n > 1)
			put(w, s + i, n);
		else if (c == ' ' || (c == '.' && series_description))
			put(w, "_", 1);
		else if (!is_removed(c))
			put(w, s + i, 1);
		i += n ? n : 1;
	}
}

/* The component rules that hold whatever the template and values were. */
static void end_component(struct writer *w)
{
	char *c = w->buf + w->start;

	if (w->len == w->start) {
		/* Even if a character too wide for the limit emptied it. */
		w->full = false;
		put_ascii(w, UNKNOWN_VALUE);
	}
	/* Not ".", "..", a hidden folder, or one of our ".tmp" names. */
	for (size_t i = w->start; i < w->len && *c == '.'; i++, c++)
		*c = '_';
}

static void next_component(struct writer *w)
{
	end_component(w);
	if (w->overflow)
		return;
	if (w->len + 1 > w->cap) {
		w->overflow = true;
		return;
	}
	w->buf[w->len++] = '/';
	w->start = w->len;
	w->full = false;
}

int layout_expand(const struct layout *layout, layout_value_fn get, void *ctx,
		  char *out, size_t outlen, struct error *err)
{
	struct writer w;

	writer_init(&w, out, outlen, LAYOUT_COMPONENT_MAX);
	for (size_t i = 0; i < layout->nparts; i++) {
		const struct part *p = &layout->parts[i];

		switch (p->kind) {
		case PART_BREAK:
			next_component(&w);
			break;
		case PART_TEXT:
			put_text(&w, p->text);
			break;
		case PART_VALUE:
			put_value(&w, get(ctx, p->text), p->series_description);
			break;
		}
	}
	end_component(&w);
	if (w.overflow) {
		if (outlen > 0)
			out[0] = '\0';
		return error_set(err, ERROR_INPUT, ENAMETOOLONG,
				 "destination path longer than %zu bytes", w.cap);
	}
	out[w.len] = '\0';
	return 0;
}

void layout_sanitize_component(const char *value, int series_description,
			       char *out, size_t outlen)
{
	struct writer w;

	if (outlen == 0)
		return;
	/* A short buffer cuts like the limit does, on a character boundary. */
	writer_init(&w, out, outlen, outlen - 1 < LAYOUT_COMPONENT_MAX ?
		    outlen - 1 : LAYOUT_COMPONENT_MAX);
	put_value(&w, value, series_description != 0);
	end_component(&w);
	out[w.len] = '\0';
}
