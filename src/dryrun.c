/* dryrun.c - a config's dry run against sample files; see dryrun.h. */
#include "dicomsort/dryrun.h"

#include <dirent.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dicomsort/daemon.h"
#include "dicomsort/dicom.h"
#include "dicomsort/pipeline.h"
#include "dicomsort/watch.h"

/* Values longer than this are cut in the report (a terminal line). */
#define VALUE_MAX 96

struct attr {
	uint32_t tag;
	char *value;
};

struct attrs {
	struct attr *a;
	size_t n, cap;
};

struct counts {
	unsigned stored, quarantined, held, ignored, skipped, failed;
};

struct run {
	const struct config *cfg;
	struct pipeline *pipeline;
	bool json;
	bool first;			/* no JSON file object printed yet */
	struct attrs before, after;	/* top-level attributes of one file */
	struct counts counts;
};

static void attrs_clear(struct attrs *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->a[i].value);
	free(s->a);
	memset(s, 0, sizeof(*s));
}

static bool binary_vr(const char *vr)
{
	static const char *const vrs[] = { "OB", "OW", "OF", "OD", "OL", "OV",
					   "UN", NULL };

	for (const char *const *v = vrs; *v != NULL; v++)
		if (strcmp(vr, *v) == 0)
			return true;
	return false;
}

/* Top-level text attributes only: what an admin checks a profile by.
 * A sequence counts as present or not (its items are not compared). */
static enum dicom_visit_action collect(void *ctx, struct dicom_elem *elem)
{
	struct attrs *s = ctx;
	const char *vr = dicom_elem_vr(elem);
	char *value = NULL;

	if (dicom_elem_depth(elem) != 0 || binary_vr(vr))
		return DCM_VISIT_KEEP;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		struct attr *a = realloc(s->a, cap * sizeof(*a));

		if (a == NULL)
			return DCM_VISIT_KEEP;
		s->a = a;
		s->cap = cap;
	}
	if (strcmp(vr, "SQ") == 0)
		value = strdup("(sequence)");
	else if (dicom_elem_get_string(elem, &value) != 1 || value == NULL) {
		free(value);
		value = strdup("");
	}
	if (value == NULL)
		return DCM_VISIT_KEEP;
	s->a[s->n].tag = dicom_elem_tag(elem);
	s->a[s->n++].value = value;
	return DCM_VISIT_KEEP;
}

static void inspect(void *ctx, struct dicom_file *file, bool deidentified)
{
	struct run *r = ctx;
	struct error err = ERROR_INIT;

	dicom_visit(file, collect, deidentified ? &r->after : &r->before, &err);
}

static const struct attr *find(const struct attrs *s, uint32_t tag)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->a[i].tag == tag)
			return &s->a[i];
	return NULL;
}

/* ---- printing ---- */

static void json_str(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

/* A value on a terminal: quoted, control bytes as '?', cut when long. */
static void text_value(const struct attr *a)
{
	size_t n = 0;

	if (a == NULL) {
		fputs("(absent)", stdout);
		return;
	}
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)a->value; *p;
	     p++, n++) {
		if (n == VALUE_MAX) {
			fputs("...", stdout);
			break;
		}
		putchar(*p < 0x20 || *p == 0x7f ? '?' : *p);
	}
	putchar('"');
}

static void tag_names(uint32_t tag, char *kw, size_t kwlen, char *tagtxt,
		      size_t taglen)
{
	dicom_keyword_from_tag(tag, kw, kwlen);
	snprintf(tagtxt, taglen, "(%04x,%04x)", (unsigned)(tag >> 16),
		 (unsigned)(tag & 0xffff));
	if (kw[0] == '\0')
		snprintf(kw, kwlen, "%s", tagtxt);
}

static void print_change(struct run *r, const struct attr *old,
			 const struct attr *new, bool *first)
{
	uint32_t tag = old != NULL ? old->tag : new->tag;
	char kw[128], tagtxt[16];

	tag_names(tag, kw, sizeof(kw), tagtxt, sizeof(tagtxt));
	if (!r->json) {
		printf("    %s %s: ", kw, tagtxt);
		text_value(old);
		fputs(" -> ", stdout);
		text_value(new);
		putchar('\n');
		return;
	}
	printf("%s{\"keyword\": ", *first ? "" : ", ");
	*first = false;
	json_str(kw);
	printf(", \"tag\": ");
	json_str(tagtxt);
	printf(", \"old\": ");
	if (old != NULL)
		json_str(old->value);
	else
		fputs("null", stdout);
	printf(", \"new\": ");
	if (new != NULL)
		json_str(new->value);
	else
		fputs("null", stdout);
	putchar('}');
}

/* Every top-level attribute the profile changed, removed or added. */
static void print_changes(struct run *r)
{
	bool first = true;

	if (r->json)
		fputs(", \"changes\": [", stdout);
	for (size_t i = 0; i < r->before.n; i++) {
		const struct attr *old = &r->before.a[i];
		const struct attr *new = find(&r->after, old->tag);

		if (new == NULL || strcmp(old->value, new->value) != 0)
			print_change(r, old, new, &first);
	}
	for (size_t i = 0; i < r->after.n; i++)
		if (find(&r->before, r->after.a[i].tag) == NULL)
			print_change(r, NULL, &r->after.a[i], &first);
	if (r->json)
		putchar(']');
}

/* One file's verdict: outcome, then the detail (destination or reason). */
static void print_verdict(struct run *r, const char *rel, const char *outcome,
			  const char *key, const char *detail, bool changes)
{
	if (!r->json) {
		printf("%s: %s", rel, outcome);
		if (detail != NULL)
			printf("%s%s", strcmp(key, "destination") == 0 ?
			       " as " : ": ", detail);
		putchar('\n');
		if (changes)
			print_changes(r);
		return;
	}
	printf("%s\n    {\"file\": ", r->first ? "" : ",");
	r->first = false;
	json_str(rel);
	fputs(", \"outcome\": ", stdout);
	json_str(outcome);
	if (detail != NULL) {
		printf(", \"%s\": ", key);
		json_str(detail);
	}
	if (changes)
		print_changes(r);
	putchar('}');
}

/* ---- deciding ---- */

static void decide(struct run *r, const char *path, const char *rel)
{
	struct pipeline_hooks hooks = { .inspect = inspect, .ctx = r };
	struct pipeline_result res;
	char reason[sizeof(res.err.msg) + 64];

	pipeline_file_hooked(r->pipeline, path, rel, &hooks, &res);
	switch (res.status) {
	case PIPELINE_STORED:
	case PIPELINE_DUPLICATE:
		r->counts.stored++;
		print_verdict(r, rel, "stored", "destination", res.dest, true);
		break;
	case PIPELINE_HELD:
		r->counts.held++;
		print_verdict(r, rel, "held", "reason", "PatientID not in the "
			      "correlation table (deid.unknown_id = \"hold\"): "
			      "parked in the hold folder until a table maps it",
			      false);
		break;
	case PIPELINE_REJECTED:
		r->counts.quarantined++;
		snprintf(reason, sizeof(reason), "%s: %s", res.policy_rejected ?
			 "de-identification policy" : "input rejected",
			 res.err.msg);
		print_verdict(r, rel, "quarantined", "reason", reason, false);
		break;
	case PIPELINE_FAILED:
		r->counts.failed++;
		print_verdict(r, rel, "error", "reason", res.err.msg, false);
		break;
	}
	attrs_clear(&r->before);
	attrs_clear(&r->after);
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in dir, sorted (a stable report); NULL-terminated. */
static char **list_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **names = NULL, **grown;
	size_t n = 0, cap = 0;

	if (d == NULL)
		return NULL;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n + 1 >= cap) {
			cap = cap ? cap * 2 : 32;
			grown = realloc(names, cap * sizeof(*names));
			if (grown == NULL)
				break;
			names = grown;
		}
		if ((names[n] = strdup(de->d_name)) != NULL)
			n++;
	}
	closedir(d);
	if (names == NULL)
		names = calloc(1, sizeof(*names));
	if (names == NULL)
		return NULL;
	names[n] = NULL;
	qsort(names, n, sizeof(*names), cmp_names);
	return names;
}

static void walk(struct run *r, const char *root, const char *rel)
{
	char dir[PATH_MAX], path[PATH_MAX], sub[PATH_MAX];
	char **names;
	struct stat st;

	snprintf(dir, sizeof(dir), "%s%s%s", root, rel[0] ? "/" : "", rel);
	if ((names = list_dir(dir)) == NULL) {
		r->counts.failed++;
		print_verdict(r, rel[0] ? rel : ".", "error", "reason",
			      "cannot read this folder", false);
		return;
	}
	for (char **n = names; *n != NULL; n++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, *n) >=
		    sizeof(path) ||
		    (size_t)snprintf(sub, sizeof(sub), "%s%s%s", rel,
				     rel[0] ? "/" : "", *n) >= sizeof(sub))
			continue;
		if (lstat(path, &st) == -1)
			continue;
		if (S_ISDIR(st.st_mode)) {
			walk(r, root, sub);
		} else if (!S_ISREG(st.st_mode)) {
			r->counts.skipped++;
			print_verdict(r, sub, "skipped", "reason", "not a regular "
				      "file (symlinks are not followed)", false);
		} else if (watch_ignored((const char *const *)r->cfg->ignore,
					 sub)) {
			r->counts.ignored++;
			print_verdict(r, sub, "ignored", "reason",
				      "an ignore glob matches its name or a "
				      "folder's on its way", false);
		} else {
			decide(r, path, sub);
		}
	}
	for (char **n = names; *n != NULL; n++)
		free(*n);
	free(names);
}

static void print_summary(const struct run *r)
{
	const struct counts *c = &r->counts;

	if (r->json) {
		printf("\n  ],\n  \"counts\": {\"stored\": %u, \"quarantined\": "
		       "%u, \"held\": %u, \"ignored\": %u, \"skipped\": %u, "
		       "\"error\": %u}\n}\n", c->stored, c->quarantined,
		       c->held, c->ignored, c->skipped, c->failed);
		return;
	}
	printf("-- %u stored, %u quarantined, %u held, %u ignored, %u "
	       "skipped, %u errors; nothing was written\n", c->stored,
	       c->quarantined, c->held, c->ignored, c->skipped, c->failed);
}

int dryrun_run(const struct config *cfg, const char *sample_dir, bool json)
{
	struct run r = { .cfg = cfg, .json = json, .first = true };
	struct deid_secret *secret = NULL;
	struct error err = ERROR_INIT;
	struct stat st;
	int rc = 2;

	if (stat(sample_dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "dicomsortd: --sample %s: not a folder\n",
			sample_dir);
		return 2;
	}
	if (daemon_dry_pipeline(cfg, &r.pipeline, &secret, &err) == -1) {
		fprintf(stderr, "dicomsortd: %s\n", err.msg);
		goto out;
	}
	if (json) {
		fputs("{\n  \"output\": ", stdout);
		json_str(cfg->output);
		fputs(",\n  \"files\": [", stdout);
	} else {
		printf("-- destinations are below %s\n", cfg->output);
	}
	walk(&r, sample_dir, "");
	print_summary(&r);
	rc = 0;
out:
	pipeline_free(r.pipeline);
	deid_secret_free(secret);
	return rc;
}
