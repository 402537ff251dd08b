/* correlation.c - the PatientID correlation table; see correlation.h. */
#include "dicomsort/correlation.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* IDs are quoted in messages; a garbage line must not drown the rest. */
#define MSG_ID_MAX 80

struct entry {
	char *old_id;		/* one allocation: "old\0new\0" */
	const char *new_id;
	uint64_t hash;
	size_t line;
};

/*
 * Open addressing with linear probing; the capacity is a power of two and
 * the table is kept at most half full, so a lookup probes a slot or two.
 * Built once by correlation_load() and read-only after, hence no locks.
 */
struct correlation {
	atomic_size_t refs;
	struct entry *slots;
	size_t capacity;
	size_t count;
};

/* What correlation_load() carries from line to line. */
struct loader {
	struct correlation *table;
	const char *path;
	size_t lineno;
	struct error *err;
};

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ULL;
	}
	return h;
}

static struct entry *find_slot(const struct correlation *t, const char *id,
			       uint64_t hash)
{
	size_t mask = t->capacity - 1;
	size_t i = (size_t)hash & mask;

	while (t->slots[i].old_id != NULL &&
	       (t->slots[i].hash != hash || strcmp(t->slots[i].old_id, id) != 0))
		i = (i + 1) & mask;
	return &t->slots[i];
}

static int grow(struct correlation *t)
{
	struct entry *old = t->slots;
	size_t oldcap = t->capacity;
	size_t cap = oldcap ? oldcap * 2 : 64;
	struct entry *slots = calloc(cap, sizeof(*slots));

	if (slots == NULL)
		return -1;
	t->slots = slots;
	t->capacity = cap;
	for (size_t i = 0; i < oldcap; i++)
		if (old[i].old_id != NULL)
			*find_slot(t, old[i].old_id, old[i].hash) = old[i];
	free(old);
	return 0;
}

static void table_free(struct correlation *t)
{
	for (size_t i = 0; i < t->capacity; i++)
		free(t->slots[i].old_id);
	free(t->slots);
	free(t);
}

static int add_pair(struct loader *ld, const char *old_id, const char *new_id)
{
	struct correlation *t = ld->table;
	uint64_t hash = fnv1a(old_id);
	size_t oldlen = strlen(old_id), newlen = strlen(new_id);
	struct entry *e;

	if ((t->count + 1) * 2 > t->capacity && grow(t) == -1)
		return error_set(ld->err, ERROR_SETUP, ENOMEM, "%s", ld->path);
	e = find_slot(t, old_id, hash);
	if (e->old_id != NULL) {
		if (strcmp(e->new_id, new_id) == 0)
			return 0;
		return error_set(ld->err, ERROR_SETUP, 0,
				 "%s:%zu: ID '%.*s' already mapped to '%.*s' on "
				 "line %zu", ld->path, ld->lineno, MSG_ID_MAX,
				 old_id, MSG_ID_MAX, e->new_id, e->line);
	}
	e->old_id = malloc(oldlen + newlen + 2);
	if (e->old_id == NULL)
		return error_set(ld->err, ERROR_SETUP, ENOMEM, "%s", ld->path);
	memcpy(e->old_id, old_id, oldlen + 1);
	memcpy(e->old_id + oldlen + 1, new_id, newlen + 1);
	e->new_id = e->old_id + oldlen + 1;
	e->hash = hash;
	e->line = ld->lineno;
	t->count++;
	return 0;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\f' || c == '\v';
}

static bool is_separator(char c)
{
	return c == ',' || is_blank(c);
}

/*
 * Split line in place into the fields between runs of separators. Trailing
 * separators are fine (spreadsheets export "OLD,NEW,,"); a leading comma
 * is not: the original read it as an empty old ID, and silently taking the
 * next field instead would map some other ID.
 */
static int parse_line(struct loader *ld, char *line)
{
	char *field[2];
	size_t n = 0;
	char *p = line;
	bool leading_comma;

	while (is_blank(*p))
		p++;
	if (*p == '#')
		return 0;
	leading_comma = *p == ',';
	for (;;) {
		while (is_separator(*p))
			p++;
		if (*p == '\0')
			break;
		if (n < 2)
			field[n] = p;
		n++;
		while (*p != '\0' && !is_separator(*p))
			p++;
		if (*p != '\0')
			*p++ = '\0';
	}
	if (n == 0)
		return 0;	/* blank, or an empty spreadsheet row ",," */
	if (leading_comma)
		return error_set(ld->err, ERROR_SETUP, 0,
				 "%s:%zu: line starts with ',': empty old ID",
				 ld->path, ld->lineno);
	if (n != 2)
		return error_set(ld->err, ERROR_SETUP, 0,
				 "%s:%zu: expected two fields (old and new ID), "
				 "found %zu", ld->path, ld->lineno, n);
	return add_pair(ld, field[0], field[1]);
}

/*
 * One getline() chunk ends at '\n' or the end of the file. Lines end at
 * "\n", "\r\n" or a lone '\r' as with Python's universal newlines, so a
 * chunk may hold several lines.
 */
static int parse_chunk(struct loader *ld, char *buf, size_t len)
{
	size_t i = 0;

	while (i < len) {
		size_t end = i;

		while (end < len && buf[end] != '\n' && buf[end] != '\r')
			end++;
		ld->lineno++;
		if (memchr(buf + i, '\0', end - i) != NULL)
			return error_set(ld->err, ERROR_SETUP, 0,
					 "%s:%zu: NUL byte: not a text file",
					 ld->path, ld->lineno);
		if (end < len && buf[end] == '\r' && end + 1 < len &&
		    buf[end + 1] == '\n')
			buf[end++] = '\0';
		buf[end] = '\0';	/* getline() leaves room at buf[len] */
		if (parse_line(ld, buf + i) == -1)
			return -1;
		i = end + 1;
	}
	return 0;
}

/* A byte order mark is not part of the first ID; UTF-16 is refused
 * clearly rather than as a "NUL byte" on line 1. */
static int skip_bom(struct loader *ld, char **buf, size_t *len)
{
	const unsigned char *b = (const unsigned char *)*buf;

	if (*len >= 3 && b[0] == 0xef && b[1] == 0xbb && b[2] == 0xbf) {
		*buf += 3;
		*len -= 3;
	} else if (*len >= 2 && ((b[0] == 0xff && b[1] == 0xfe) ||
				 (b[0] == 0xfe && b[1] == 0xff))) {
		return error_set(ld->err, ERROR_SETUP, 0, "%s: UTF-16 text; "
				 "save the table as UTF-8", ld->path);
	}
	return 0;
}

static int parse_file(struct loader *ld, FILE *f)
{
	char *line = NULL;
	size_t cap = 0;
	int rc = 0;

	while (rc == 0) {
		ssize_t n;
		char *p;
		size_t len;

		errno = 0;
		n = getline(&line, &cap, f);
		if (n == -1) {
			/* The end, a read error and ENOMEM all look like -1. */
			if (ferror(f) || errno == ENOMEM)
				rc = error_set(ld->err, ERROR_SETUP,
					       errno ? errno : EIO, "%s",
					       ld->path);
			break;
		}
		p = line;
		len = (size_t)n;
		if (ld->lineno == 0)
			rc = skip_bom(ld, &p, &len);
		if (rc == 0)
			rc = parse_chunk(ld, p, len);
	}
	free(line);
	return rc;
}

int correlation_load(struct correlation **out, const char *path, struct error *err)
{
	struct loader ld = { NULL, path, 0, err };
	FILE *f;
	int rc;

	ld.table = calloc(1, sizeof(*ld.table));
	if (ld.table == NULL || grow(ld.table) == -1) {
		free(ld.table);
		return error_set(err, ERROR_SETUP, ENOMEM, "%s", path);
	}
	atomic_init(&ld.table->refs, 1);
	f = fopen(path, "re");
	if (f == NULL) {
		error_set(err, ERROR_SETUP, errno, "%s", path);
		table_free(ld.table);
		return -1;
	}
	rc = parse_file(&ld, f);
	fclose(f);
	if (rc == -1) {
		table_free(ld.table);
		return -1;
	}
	*out = ld.table;
	return 0;
}

const char *correlation_lookup(const struct correlation *table, const char *old_id)
{
	const struct entry *e;

	if (table == NULL || old_id == NULL)
		return NULL;
	e = find_slot(table, old_id, fnv1a(old_id));
	return e->old_id != NULL ? e->new_id : NULL;
}

size_t correlation_size(const struct correlation *table)
{
	return table->count;
}

struct correlation *correlation_ref(struct correlation *table)
{
	/* Taking a reference needs no ordering: the caller already holds one. */
	atomic_fetch_add_explicit(&table->refs, 1, memory_order_relaxed);
	return table;
}

void correlation_unref(struct correlation *table)
{
	if (table == NULL)
		return;
	/* Release our reads of the table before whoever frees it. */
	if (atomic_fetch_sub_explicit(&table->refs, 1,
				      memory_order_acq_rel) == 1)
		table_free(table);
}
