/* layout.c - templates and path sanitizing; see layout.h. */
#include "dicomsort/layout.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum part_kind { PART_TEXT, PART_PLACEHOLDER, PART_BREAK };

struct part {
	enum part_kind kind;
	char *text;		/* literal text, or the keyword */
};

struct layout {
	struct part *parts;
	size_t count;
	size_t placeholders;
	size_t components;
};

/* A growing output buffer; overflow is remembered, not written. */
struct out {
	char *buf;
	size_t len, cap;
	bool overflow;
};

static void out_byte(struct out *o, char c)
{
	if (o->len + 1 >= o->cap) {
		o->overflow = true;
		return;
	}
	o->buf[o->len++] = c;
	o->buf[o->len] = '\0';
}

static int add_part(struct layout *l, enum part_kind kind, const char *text,
		    size_t len)
{
	struct part *p = realloc(l->parts, (l->count + 1) * sizeof(*p));

	if (p == NULL)
		return -1;
	l->parts = p;
	p[l->count].kind = kind;
	p[l->count].text = NULL;
	if (text != NULL) {
		p[l->count].text = strndup(text, len);
		if (p[l->count].text == NULL)
			return -1;
	}
	l->count++;
	return 0;
}

static int compile_placeholder(struct layout *l, const char *tmpl,
			       const char **pp, struct error *err)
{
	const char *start = *pp + 1;
	const char *end = strchr(start, '}');

	if (end == NULL)
		return error_set(err, ERROR_SETUP, 0, "template '%s': '{' without "
				 "'}'", tmpl);
	if (end == start)
		return error_set(err, ERROR_SETUP, 0, "template '%s': empty {}", tmpl);
	for (const char *c = start; c < end; c++)
		if (!isalnum((unsigned char)*c))
			return error_set(err, ERROR_SETUP, 0, "template '%s': '%.*s' "
					 "is not a DICOM keyword", tmpl,
					 (int)(end - start), start);
	if (add_part(l, PART_PLACEHOLDER, start, (size_t)(end - start)) == -1)
		return error_set(err, ERROR_SETUP, ENOMEM, "template");
	l->placeholders++;
	*pp = end + 1;
	return 0;
}

static int compile(struct layout *l, const char *tmpl, struct error *err)
{
	const char *p = tmpl;

	l->components = 1;
	while (*p) {
		size_t n = strcspn(p, "{}/");

		if (n > 0 && add_part(l, PART_TEXT, p, n) == -1)
			return error_set(err, ERROR_SETUP, ENOMEM, "template");
		p += n;
		if (*p == '\0')
			break;
		if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
			if (add_part(l, PART_TEXT, p, 1) == -1)
				return error_set(err, ERROR_SETUP, ENOMEM, "template");
			p += 2;
		} else if (*p == '}') {
			return error_set(err, ERROR_SETUP, 0, "template '%s': '}' "
					 "without '{'", tmpl);
		} else if (*p == '{') {
			if (compile_placeholder(l, tmpl, &p, err) == -1)
				return -1;
		} else {	/* '/': a trailing one, or a doubled one, adds nothing */
			p++;
			if (*p != '\0' && *p != '/' && l->count > 0 &&
			    l->parts[l->count - 1].kind != PART_BREAK) {
				if (add_part(l, PART_BREAK, NULL, 0) == -1)
					return error_set(err, ERROR_SETUP, ENOMEM, "template");
				l->components++;
			}
		}
	}
	return 0;
}

int layout_compile(struct layout **out, const char *tmpl, struct error *err)
{
	struct layout *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return error_set(err, ERROR_SETUP, ENOMEM, "template");
	if (compile(l, tmpl, err) == -1) {
		layout_free(l);
		return -1;
	}
	*out = l;
	return 0;
}

void layout_free(struct layout *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->count; i++)
		free(l->parts[i].text);
	free(l->parts);
	free(l);
}

size_t layout_placeholder_count(const struct layout *l)
{
	return l->placeholders;
}

const char *layout_placeholder(const struct layout *l, size_t i)
{
	for (size_t k = 0; k < l->count; k++)
		if (l->parts[k].kind == PART_PLACEHOLDER && i-- == 0)
			return l->parts[k].text;
	return NULL;
}

size_t layout_component_count(const struct layout *l)
{
	return l->components;
}

/* Length of the valid UTF-8 sequence at s, 0 if invalid. */
static size_t utf8_length(const unsigned char *s)
{
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
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if (n == 3 && s[0] == 0xe0 && s[1] < 0xa0)
		return 0;	/* overlong */
	if (n == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90)))
		return 0;
	return n;
}

static bool removed_char(unsigned char c)
{
	return c < 0x20 || c == 0x7f || strchr("*<>:\"/\\|?", c) != NULL;
}

/* One value, sanitized, appended to o. */
static void put_value(struct out *o, const char *value, bool series_description)
{
	const unsigned char *s = (const unsigned char *)value;
	size_t len;
	size_t start = o->len;

	while (*s == ' ')
		s++;
	len = strlen((const char *)s);
	while (len > 0 && s[len - 1] == ' ')
		len--;
	for (size_t i = 0; i < len;) {
		size_t n = utf8_length(s + i);

		if (n == 0) {
			out_byte(o, '_');
			i++;
		} else if (n > 1) {
			for (size_t k = 0; k < n; k++)
				out_byte(o, (char)s[i + k]);
			i += n;
		} else {
			unsigned char c = s[i++];
			if (c == ' ')
				out_byte(o, '_');
			else if (series_description && c == '.')
				out_byte(o, '_');
			else if (!removed_char(c))
				out_byte(o, (char)c);
		}
	}
	if (o->len == start)
		for (const char *u = "UNKNOWN"; *u; u++)
			out_byte(o, *u);
}

/* Make the component o->buf[start..] safe: not empty, no leading dot, at
 * most LAYOUT_COMPONENT_MAX bytes, cut on a character boundary. */
static void finish_component(struct out *o, size_t start)
{
	char *c = o->buf + start;
	size_t len = o->len - start;

	/* "." and ".." never; a leading dot would also hide the folder and
	 * could mimic our temp names: each leading dot becomes '_'. */
	for (size_t i = 0; i < len && c[i] == '.'; i++)
		c[i] = '_';
	if (len == 0)
		for (const char *u = "UNKNOWN"; *u; u++)
			out_byte(o, *u);
	if (o->len - start > LAYOUT_COMPONENT_MAX) {
		size_t cut = LAYOUT_COMPONENT_MAX;
		while (cut > 0 && ((unsigned char)c[cut] & 0xc0) == 0x80)
			cut--;
		o->len = start + cut;
		o->buf[o->len] = '\0';
	}
}

int layout_expand(const struct layout *l, layout_value_fn get, void *ctx,
		  char *buf, size_t buflen, struct error *err)
{
	struct out o = { buf, 0, buflen, buflen == 0 };
	size_t start = 0;

	if (buflen > 0)
		buf[0] = '\0';
	for (size_t i = 0; i < l->count; i++) {
		const struct part *p = &l->parts[i];

		if (p->kind == PART_BREAK) {
			finish_component(&o, start);
			out_byte(&o, '/');
			start = o.len;
		} else if (p->kind == PART_TEXT) {
			for (const char *t = p->text; *t; t++)
				if (!removed_char((unsigned char)*t))
					out_byte(&o, *t);
		} else {
			const char *v = get(ctx, p->text);
			put_value(&o, v ? v : "",
				  strcmp(p->text, "SeriesDescription") == 0);
		}
	}
	finish_component(&o, start);
	if (o.overflow)
		return error_set(err, ERROR_INPUT, ENAMETOOLONG, "destination path");
	return 0;
}

void layout_sanitize_component(const char *value, int series_description,
			       char *buf, size_t buflen)
{
	struct out o = { buf, 0, buflen, buflen == 0 };

	if (buflen == 0)
		return;
	buf[0] = '\0';
	put_value(&o, value, series_description != 0);
	finish_component(&o, 0);
}
