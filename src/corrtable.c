/* corrtable.c - the PatientID correlation table; see corrtable.h. */
#include "dicomsort/corrtable.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	char *old_id;
	char *new_id;
	size_t line;
};

/* Open addressing, linear probing, capacity a power of two kept at most
 * half full: O(1) lookups, built once, never changed. */
struct corrtable {
	atomic_size_t refs;
	struct entry *slots;
	size_t capacity;
	size_t count;
};

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

static struct entry *slot_for(const struct corrtable *t, const char *id)
{
	size_t i = (size_t)fnv1a(id) & (t->capacity - 1);

	while (t->slots[i].old_id != NULL && strcmp(t->slots[i].old_id, id) != 0)
		i = (i + 1) & (t->capacity - 1);
	return &t->slots[i];
}

static int grow(struct corrtable *t)
{
	struct entry *old = t->slots;
	size_t oldcap = t->capacity;

	t->capacity = oldcap ? oldcap * 2 : 64;
	t->slots = calloc(t->capacity, sizeof(*t->slots));
	if (t->slots == NULL) {
		t->slots = old;
		t->capacity = oldcap;
		return -1;
	}
	for (size_t i = 0; i < oldcap; i++)
		if (old[i].old_id != NULL)
			*slot_for(t, old[i].old_id) = old[i];
	free(old);
	return 0;
}

static void table_free(struct corrtable *t)
{
	for (size_t i = 0; i < t->capacity; i++) {
		free(t->slots[i].old_id);
		free(t->slots[i].new_id);
	}
	free(t->slots);
	free(t);
}

/* Fields are separated by runs of commas, spaces and tabs. */
static size_t split_fields(char *line, char **fields, size_t max)
{
	size_t n = 0;
	char *save = NULL;

	for (char *f = strtok_r(line, ", \t", &save); f != NULL;
	     f = strtok_r(NULL, ", \t", &save)) {
		if (n < max)
			fields[n] = f;
		n++;
	}
	return n;
}

static int add_pair(struct corrtable *t, const char *path, size_t lineno,
		    const char *old_id, const char *new_id, struct error *err)
{
	struct entry *e;

	if ((t->count + 1) * 2 > t->capacity && grow(t) == -1)
		return error_set(err, ERROR_SETUP, ENOMEM, "%s", path);
	e = slot_for(t, old_id);
	if (e->old_id != NULL) {
		if (strcmp(e->new_id, new_id) == 0)
			return 0;
		return error_set(err, ERROR_SETUP, 0, "%s:%zu: ID '%s' is already "
				 "mapped to '%s' on line %zu", path, lineno,
				 old_id, e->new_id, e->line);
	}
	e->old_id = strdup(old_id);
	e->new_id = strdup(new_id);
	e->line = lineno;
	if (e->old_id == NULL || e->new_id == NULL)
		return error_set(err, ERROR_SETUP, ENOMEM, "%s", path);
	t->count++;
	return 0;
}

static void strip_line_end(char *line, size_t *len)
{
	while (*len > 0 && (line[*len - 1] == '\n' || line[*len - 1] == '\r'))
		line[--*len] = '\0';
}

static int parse_line(struct corrtable *t, const char *path, size_t lineno,
		      char *line, size_t len, struct error *err)
{
	char *fields[2];
	char *p = line;
	size_t n;

	if (memchr(line, '\0', len) != NULL)
		return error_set(err, ERROR_SETUP, 0, "%s:%zu: NUL byte in line",
				 path, lineno);
	/* A UTF-8 byte order mark may start the file (Windows editors). */
	if (lineno == 1 && len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
		p += 3;
	p += strspn(p, " \t");
	if (*p == '\0' || *p == '#')
		return 0;
	n = split_fields(p, fields, 2);
	if (n == 0)
		return 0;
	if (n != 2)
		return error_set(err, ERROR_SETUP, 0, "%s:%zu: expected two fields "
				 "(old and new ID), found %zu", path, lineno, n);
	return add_pair(t, path, lineno, fields[0], fields[1], err);
}

int corrtable_load(struct corrtable **out, const char *path, struct error *err)
{
	struct corrtable *t = calloc(1, sizeof(*t));
	char *line = NULL;
	size_t cap = 0, lineno = 0;
	ssize_t len;
	FILE *f;
	int rc = 0;

	if (t == NULL)
		return error_set(err, ERROR_SETUP, ENOMEM, "%s", path);
	atomic_init(&t->refs, 1);
	f = fopen(path, "re");
	if (f == NULL || grow(t) == -1) {
		error_set(err, ERROR_SETUP, errno, "%s", path);
		if (f)
			fclose(f);
		table_free(t);
		return -1;
	}
	while (rc == 0 && (len = getline(&line, &cap, f)) != -1) {
		size_t l = (size_t)len;

		lineno++;
		strip_line_end(line, &l);
		rc = parse_line(t, path, lineno, line, l, err);
	}
	if (rc == 0 && ferror(f))
		rc = error_set(err, ERROR_SETUP, errno, "%s", path);
	free(line);
	fclose(f);
	if (rc == -1) {
		table_free(t);
		return -1;
	}
	*out = t;
	return 0;
}

const char *corrtable_lookup(const struct corrtable *t, const char *old_id)
{
	const struct entry *e = slot_for(t, old_id);

	return e->old_id ? e->new_id : NULL;
}

size_t corrtable_size(const struct corrtable *t)
{
	return t->count;
}

struct corrtable *corrtable_ref(struct corrtable *t)
{
	atomic_fetch_add(&t->refs, 1);
	return t;
}

void corrtable_unref(struct corrtable *t)
{
	if (t != NULL && atomic_fetch_sub(&t->refs, 1) == 1)
		table_free(t);
}
