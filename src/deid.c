/* deid.c - de-identification profiles; see deid.h. */
#include "dicomsort/deid.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "deid_rules.h"

#define SECRET_MIN 16
#define SECRET_MAX 4096
#define MAX_TOKENS 64
#define DEFAULT_SHIFT_DAYS 365

struct deid_secret {
	size_t len;
	unsigned char key[SECRET_MAX];
};

/* ---- names ---- */

static const char *const profile_names[] = {
	[DEID_NONE] = "none",
	[DEID_SEED] = "seed",
	[DEID_BASIC] = "basic",
};

/* Bit i is column i of Table E.1-1 (deid_rules.h). */
static const char *const option_names[DEID_OPTION_COUNT] = {
	"retain_safe_private", "retain_uids", "retain_device_identity",
	"retain_institution_identity", "retain_patient_characteristics",
	"retain_long_full_dates", "retain_long_modified_dates",
	"clean_descriptors", "clean_structured_content", "clean_graphics",
};

/* CID 7050 code of each option, same order; the profile's own first. */
static const struct dicom_code profile_code = {
	"113100", "DCM", "Basic Application Confidentiality Profile" };
static const struct dicom_code option_codes[DEID_OPTION_COUNT] = {
	{ "113111", "DCM", "Retain Safe Private Option" },
	{ "113110", "DCM", "Retain UIDs Option" },
	{ "113109", "DCM", "Retain Device Identity Option" },
	{ "113112", "DCM", "Retain Institution Identity Option" },
	{ "113108", "DCM", "Retain Patient Characteristics Option" },
	{ "113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option" },
	{ "113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option" },
	{ "113105", "DCM", "Clean Descriptors Option" },
	{ "113104", "DCM", "Clean Structured Content Option" },
	{ "113103", "DCM", "Clean Graphics Option" },
};

int deid_profile_from_name(const char *name, enum deid_profile *profile)
{
	for (size_t i = 0; i < sizeof(profile_names) / sizeof(*profile_names); i++) {
		if (strcmp(name, profile_names[i]) == 0) {
			*profile = (enum deid_profile)i;
			return 0;
		}
	}
	return -1;
}

const char *deid_profile_name(enum deid_profile profile)
{
	return profile_names[profile];
}

unsigned deid_option_from_name(const char *name)
{
	for (unsigned i = 0; i < DEID_OPTION_COUNT; i++)
		if (strcmp(name, option_names[i]) == 0)
			return 1u << i;
	return 0;
}

const char *deid_option_name(unsigned i)
{
	return i < DEID_OPTION_COUNT ? option_names[i] : NULL;
}

int deid_unknown_id_from_name(const char *name, enum deid_unknown_id *policy)
{
	static const char *const names[] = { "keep", "pseudonymize", "reject", "hold" };

	for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++) {
		if (strcmp(name, names[i]) == 0) {
			*policy = (enum deid_unknown_id)(i + 1);
			return 0;
		}
	}
	return -1;
}

/* ---- the secret and what is derived from it ---- */

int deid_secret_load(struct deid_secret **out, const char *path,
		     struct error *err)
{
	struct deid_secret *s;
	struct stat st;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1)
		return error_set(err, ERROR_SETUP, errno, "secret %s", path);
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		close(fd);
		return error_set(err, ERROR_SETUP, 0, "secret %s: not a regular file",
				 path);
	}
	if ((st.st_mode & 077) != 0) {
		close(fd);
		return error_set(err, ERROR_SETUP, 0, "secret %s: readable by others "
				 "than its owner (chmod 600 it)", path);
	}
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		close(fd);
		return error_set(err, ERROR_SETUP, ENOMEM, "secret");
	}
	n = read(fd, s->key, sizeof(s->key));
	close(fd);
	while (n > 0 && (s->key[n - 1] == '\n' || s->key[n - 1] == '\r'))
		n--;
	if (n < SECRET_MIN) {
		deid_secret_free(s);
		return error_set(err, ERROR_SETUP, 0, "secret %s: shorter than %d "
				 "bytes", path, SECRET_MIN);
	}
	s->len = (size_t)n;
	*out = s;
	return 0;
}

void deid_secret_free(struct deid_secret *secret)
{
	if (secret == NULL)
		return;
	OPENSSL_cleanse(secret, sizeof(*secret));
	free(secret);
}

/* HMAC-SHA-256(secret, domain || 0 || text): each use gets its own domain
 * so a UID and an ID with the same text never share a pseudonym. */
static void keyed_hash(const struct deid_secret *s, const char *domain,
		       const char *text, unsigned char out[32])
{
	unsigned char buf[512];
	size_t dl = strlen(domain), tl = strlen(text);
	unsigned int len = 32;

	if (dl + 1 + tl > sizeof(buf))
		tl = sizeof(buf) - dl - 1;
	memcpy(buf, domain, dl);
	buf[dl] = '\0';
	memcpy(buf + dl + 1, text, tl);
	HMAC(EVP_sha256(), s->key, (int)s->len, buf, dl + 1 + tl, out, &len);
}

/* "2.25." and the first 128 bits of the hash in decimal (<= 39 digits). */
static void pseudonym_uid(const struct deid_secret *s, const char *uid,
			  char *out, size_t len)
{
	unsigned char h[32];
	unsigned char num[16];
	char digits[48];
	size_t nd = 0;
	int nonzero = 1;

	keyed_hash(s, "uid", uid, h);
	memcpy(num, h, sizeof(num));
	while (nonzero) {	/* long division by 10 */
		unsigned rem = 0;

		nonzero = 0;
		for (size_t i = 0; i < sizeof(num); i++) {
			unsigned cur = rem * 256 + num[i];
			num[i] = (unsigned char)(cur / 10);
			rem = cur % 10;
			nonzero |= num[i];
		}
		digits[nd++] = (char)('0' + rem);
	}
	snprintf(out, len, "2.25.");
	for (size_t i = 0; i < nd && strlen(out) + 1 < len; i++) {
		size_t l = strlen(out);
		out[l] = digits[nd - 1 - i];
		out[l + 1] = '\0';
	}
}

static void pseudonym_id(const struct deid_options *o, const char *id,
			 char *out, size_t len)
{
	unsigned char h[32];

	keyed_hash(o->secret, "patient-id", id, h);
	snprintf(out, len, "%s%02X%02X%02X%02X%02X%02X",
		 o->pseudonym_prefix ? o->pseudonym_prefix : "ANON",
		 h[0], h[1], h[2], h[3], h[4], h[5]);
}

static int shift_days_for(const struct deid_options *o, const char *patient_id)
{
	long max = o->max_shift_days > 0 ? o->max_shift_days : DEFAULT_SHIFT_DAYS;
	unsigned char h[32];
	unsigned long v;

	keyed_hash(o->secret, "date-shift", patient_id, h);
	v = ((unsigned long)h[0] << 24) | ((unsigned long)h[1] << 16) |
	    ((unsigned long)h[2] << 8) | h[3];
	return (int)(1 + v % (unsigned long)max);
}

/* ---- options ---- */

static bool safe_private_entry_valid(const char *entry)
{
	const char *colon = strrchr(entry, ':');
	unsigned g, e;
	char x1, x2;

	return colon != NULL && colon != entry &&
	       sscanf(colon + 1, "%4x,%c%c%2x", &g, &x1, &x2, &e) == 4 &&
	       (x1 == 'x' || x1 == 'X') && (x2 == 'x' || x2 == 'X') && (g & 1);
}

int deid_check_options(const struct deid_options *o, struct error *err)
{
	if (o->profile == DEID_BASIC && o->secret == NULL)
		return error_set(err, ERROR_SETUP, 0,
				 "the basic profile needs a secret file");
	if (o->unknown_id == DEID_UNKNOWN_PSEUDONYMIZE && o->secret == NULL)
		return error_set(err, ERROR_SETUP, 0,
				 "pseudonymizing unknown IDs needs a secret file");
	if ((o->options & DEID_RETAIN_FULL_DATES) &&
	    (o->options & DEID_RETAIN_MODIFIED_DATES))
		return error_set(err, ERROR_SETUP, 0, "retain_long_full_dates and "
				 "retain_long_modified_dates exclude each other");
	for (const char *const *p = o->safe_private; p && *p; p++)
		if (!safe_private_entry_valid(*p))
			return error_set(err, ERROR_SETUP, 0, "safe private entry "
					 "'%s' is not 'CREATOR:gggg,xxee' (odd gggg)", *p);
	return 0;
}

static enum deid_unknown_id unknown_policy(const struct deid_options *o)
{
	if (o->unknown_id != DEID_UNKNOWN_DEFAULT)
		return o->unknown_id;
	return o->profile == DEID_BASIC ? DEID_UNKNOWN_PSEUDONYMIZE :
	       DEID_UNKNOWN_KEEP;
}

/* ---- the PatientID, for every profile ---- */

/* Decide the new PatientID into out (empty when there is none). -1 when
 * the object must be rejected; report->hold when it must wait. */
static int new_patient_id(const struct deid_options *o, const char *id,
			  char *out, size_t len, struct deid_report *report,
			  struct error *err)
{
	const char *mapped = o->table ? correlation_lookup(o->table, id) : NULL;

	snprintf(out, len, "%s", id);
	if (mapped != NULL) {
		snprintf(out, len, "%s", mapped);
		return 0;
	}
	if (o->table == NULL && o->profile != DEID_BASIC &&
	    o->unknown_id == DEID_UNKNOWN_DEFAULT)
		return 0;	/* nothing to map against: the original's way */
	report->id_unmapped = true;
	snprintf(report->original_id, sizeof(report->original_id), "%s", id);
	switch (unknown_policy(o)) {
	case DEID_UNKNOWN_REJECT:
		return error_set(err, ERROR_INPUT, 0,
				 "PatientID not in the correlation table");
	case DEID_UNKNOWN_HOLD:
		report->hold = true;
		return 0;
	case DEID_UNKNOWN_PSEUDONYMIZE:
		if (o->secret == NULL)
			return error_set(err, ERROR_SETUP, 0, "no secret");
		pseudonym_id(o, id, out, len);
		return 0;
	default:
		return 0;
	}
}

/* ---- seed: the original tool's anonymization ---- */

static int apply_seed(struct dicom_file *file, struct error *err)
{
	char *value = NULL;
	int rc = 0;

	/* Like the original: only attributes that are there are touched. */
	if (dicom_get_raw(file, TAG_PatientBirthDate, &value) == 1)
		rc = dicom_empty(file, TAG_PatientBirthDate, err);
	free(value);
	value = NULL;
	if (rc == 0 && dicom_get_raw(file, TAG_PatientName, &value) == 1)
		rc = dicom_put_string(file, TAG_PatientName, "ANONYMIZED", err);
	free(value);
	return rc;
}

static int apply_id_only(const struct deid_options *o, struct dicom_file *file,
			 bool seed, struct deid_report *report, struct error *err)
{
	char new_id[65];
	char *id = NULL;
	int rc = 0;

	if (seed && apply_seed(file, err) == -1)
		return -1;
	if (dicom_get_raw(file, TAG_PatientID, &id) != 1)
		return 0;
	if (new_patient_id(o, id, new_id, sizeof(new_id), report, err) == -1)
		rc = -1;
	else if (!report->hold && strcmp(new_id, id) != 0)
		rc = dicom_put_string(file, TAG_PatientID, new_id, err);
	free(id);
	return rc;
}

/* ---- basic: identifying strings, for Clean Descriptors ---- */

struct tokens {
	char *list[MAX_TOKENS];	/* lowercase, alphanumeric only */
	size_t count;
};

static bool is_separator(unsigned char c)
{
	return c < 0x80 && !isalnum(c);
}

static void add_token(struct tokens *t, const char *text, size_t len)
{
	char *tok;
	size_t n = 0;

	if (t->count == MAX_TOKENS)
		return;
	tok = malloc(len + 1);
	if (tok == NULL)
		return;
	for (size_t i = 0; i < len; i++)
		if (!is_separator((unsigned char)text[i]))
			tok[n++] = (char)tolower((unsigned char)text[i]);
	tok[n] = '\0';
	if (n < 2) {	/* an initial would erase letters everywhere */
		free(tok);
		return;
	}
	t->list[t->count++] = tok;
}

/* A name both whole and by its parts ("Doe^John" -> doejohn, doe, john). */
static void add_name_tokens(struct tokens *t, const char *value)
{
	const char *p = value;

	add_token(t, value, strlen(value));
	while (*p) {
		size_t n = strcspn(p, "^= ,\\-'");
		if (n > 0)
			add_token(t, p, n);
		p += n;
		if (*p)
			p++;
	}
}

/* The birth date as written in the usual orders: 19800131, 31011980,
 * 01311980; separators are ignored when matching. */
static void add_date_tokens(struct tokens *t, const char *da)
{
	char buf[16];

	if (strlen(da) < 8)
		return;
	add_token(t, da, 8);
	snprintf(buf, sizeof(buf), "%.2s%.2s%.4s", da + 6, da + 4, da);
	add_token(t, buf, 8);
	snprintf(buf, sizeof(buf), "%.2s%.2s%.4s", da + 4, da + 6, da);
	add_token(t, buf, 8);
}

static void add_multi(struct tokens *t, const char *value, bool name)
{
	const char *p = value;

	while (*p) {
		size_t n = strcspn(p, "\\");
		char part[256];

		snprintf(part, sizeof(part), "%.*s", (int)(n < 255 ? n : 255), p);
		if (name)
			add_name_tokens(t, part);
		else
			add_token(t, part, strlen(part));
		p += n;
		if (*p)
			p++;
	}
}

static void free_tokens(struct tokens *t)
{
	for (size_t i = 0; i < t->count; i++)
		free(t->list[i]);
	t->count = 0;
}

/* Length of the match of token at s (separators inside skipped), or 0. */
static size_t match_at(const char *s, const char *token)
{
	size_t i = 0;

	if (is_separator((unsigned char)s[0]))
		return 0;
	for (const char *t = token; *t; t++) {
		while (s[i] && is_separator((unsigned char)s[i]))
			i++;
		if (s[i] == '\0' || tolower((unsigned char)s[i]) != *t)
			return 0;
		i++;
	}
	return i;
}

/* Remove every occurrence of every token, in any case or separator form. */
static char *clean_text(const char *in, const struct tokens *t)
{
	size_t len = strlen(in), o = 0;
	char *out = malloc(len + 1);

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len;) {
		size_t best = 0;

		for (size_t k = 0; k < t->count; k++) {
			size_t m = match_at(in + i, t->list[k]);
			if (m > best)
				best = m;
		}
		if (best > 0) {
			i += best;
			continue;
		}
		out[o++] = in[i++];
	}
	out[o] = '\0';
	return out;
}

/* ---- basic: the rules ---- */

static const struct deid_rule *find_rule(uint32_t tag)
{
	size_t lo = 0, hi = deid_rules_exact_count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (deid_rules[mid].tag == tag)
			return &deid_rules[mid];
		if (deid_rules[mid].tag < tag)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = deid_rules_exact_count; i < deid_rules_count; i++)
		if (!deid_rules[i].private_row &&
		    (tag & deid_rules[i].mask) == deid_rules[i].tag)
			return &deid_rules[i];
	return NULL;
}

/* The action for this row under the chosen options; *column says which
 * option decided (-1: the Basic Profile). */
static enum deid_action effective_action(const struct deid_rule *r,
					 unsigned options, int *column)
{
	for (int c = 0; c < DEID_COL_COUNT; c++) {
		if ((options & (1u << c)) && r->option[c] != DEID_ACT_NONE) {
			*column = c;
			return r->option[c];
		}
	}
	*column = -1;
	return r->basic;
}

struct basic_ctx {
	const struct deid_options *opts;
	const struct tokens *tokens;
	const char *new_id;
	const char *new_name;
	int shift_days;
	int clean_below;	/* depth of a sequence whose text is cleaned */
	bool dates_shifted;
	struct error err;
	bool failed;
};

static const char *dummy_for_vr(const char *vr)
{
	static const struct { const char *vr, *value; } dummies[] = {
		{ "AE", "ANONYMIZED" }, { "AS", "000Y" }, { "CS", "ANONYMIZED" },
		{ "DA", "19000101" }, { "DS", "0" }, { "DT", "19000101000000" },
		{ "IS", "0" }, { "LO", "ANONYMIZED" }, { "LT", "ANONYMIZED" },
		{ "PN", "ANONYMIZED" }, { "SH", "ANONYMIZED" }, { "ST", "ANONYMIZED" },
		{ "TM", "000000" }, { "UC", "ANONYMIZED" }, { "UR", "ANONYMIZED" },
		{ "UT", "ANONYMIZED" },
	};

	for (size_t i = 0; i < sizeof(dummies) / sizeof(*dummies); i++)
		if (strcmp(vr, dummies[i].vr) == 0)
			return dummies[i].value;
	return NULL;	/* binary VRs: emptied instead */
}

static bool is_text_vr(const char *vr)
{
	static const char *const text[] = { "LO", "LT", "SH", "ST", "UT", "UC",
					     "PN", "AE", "CS" };

	for (size_t i = 0; i < sizeof(text) / sizeof(*text); i++)
		if (strcmp(vr, text[i]) == 0)
			return true;
	return false;
}

static void fail(struct basic_ctx *c, const struct error *err)
{
	if (!c->failed) {
		c->err = *err;
		c->failed = true;
	}
}

static void put(struct basic_ctx *c, struct dicom_elem *e, const char *value)
{
	struct error err = ERROR_INIT;

	if (dicom_elem_put_string(e, value, &err) == -1)
		fail(c, &err);
}

static enum dicom_visit_action empty(struct basic_ctx *c, struct dicom_elem *e)
{
	struct error err = ERROR_INIT;

	if (dicom_elem_empty(e, &err) == -1)
		fail(c, &err);
	return DCM_VISIT_KEEP;
}

/* Apply fn to each '\'-separated value of the element. */
static void map_values(struct basic_ctx *c, struct dicom_elem *e,
		       void (*fn)(struct basic_ctx *, const char *, char *, size_t))
{
	char *value = NULL, *out;
	size_t cap;

	if (dicom_elem_get_string(e, &value) != 1 || value[0] == '\0') {
		free(value);
		return;
	}
	cap = strlen(value) * 2 + 128;
	out = calloc(1, cap);
	if (out != NULL) {
		char *save = NULL;
		bool first = true;

		for (char *v = strtok_r(value, "\\", &save); v;
		     v = strtok_r(NULL, "\\", &save)) {
			char mapped[128];
			fn(c, v, mapped, sizeof(mapped));
			if (!first)
				strncat(out, "\\", cap - strlen(out) - 1);
			strncat(out, mapped, cap - strlen(out) - 1);
			first = false;
		}
		put(c, e, out);
	}
	free(out);
	free(value);
}

static void map_uid(struct basic_ctx *c, const char *uid, char *out, size_t len)
{
	pseudonym_uid(c->opts->secret, uid, out, len);
}

/* Move a date (YYYY[MM[DD]]...) back by shift_days, keeping its precision
 * and anything after the date part (a DT's time). */
static void map_date(struct basic_ctx *c, const char *value, char *out, size_t len)
{
	struct tm tm = { 0 };
	size_t digits = strspn(value, "0123456789");
	char full[48];
	time_t t;

	if (digits < 4) {
		snprintf(out, len, "%s", "19000101");
		return;
	}
	snprintf(full, sizeof(full), "%.*s%s", (int)(digits < 8 ? digits : 8),
		 value, &"0101"[digits >= 8 ? 4 : digits >= 6 ? 2 : 0]);
	if (sscanf(full, "%4d%2d%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday) != 3) {
		snprintf(out, len, "%s", "19000101");
		return;
	}
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	tm.tm_mday -= c->shift_days;
	tm.tm_hour = 12;
	t = timegm(&tm);
	gmtime_r(&t, &tm);
	snprintf(full, sizeof(full), "%04d%02d%02d", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday);
	snprintf(out, len, "%.*s%s", (int)(digits < 8 ? digits : 8), full,
		 value + (digits < 8 ? digits : 8));
}

static void shift_dates(struct basic_ctx *c, struct dicom_elem *e, const char *vr)
{
	if (strcmp(vr, "DA") == 0 || strcmp(vr, "DT") == 0) {
		map_values(c, e, map_date);
		c->dates_shifted = true;
	}
	/* TM: a shift by whole days leaves times as they are. */
}

static void clean_element(struct basic_ctx *c, struct dicom_elem *e)
{
	char *value = NULL, *cleaned;

	if (dicom_elem_get_string(e, &value) != 1) {
		free(value);
		return;
	}
	cleaned = clean_text(value, c->tokens);
	if (cleaned != NULL && strcmp(cleaned, value) != 0)
		put(c, e, cleaned);
	free(cleaned);
	free(value);
}

static enum dicom_visit_action act_clean(struct basic_ctx *c, struct dicom_elem *e,
				       const char *vr, int column)
{
	if (strcmp(vr, "SQ") == 0) {
		/* Keep the sequence; text inside it is cleaned. */
		if (c->clean_below < 0)
			c->clean_below = dicom_elem_depth(e);
		return DCM_VISIT_KEEP;
	}
	if (column == DEID_COL_MODIFIED_DATES)
		shift_dates(c, e, vr);
	else if (strcmp(vr, "UI") == 0)
		map_values(c, e, map_uid);
	else if (is_text_vr(vr))
		clean_element(c, e);
	else
		return empty(c, e);
	return DCM_VISIT_KEEP;
}

static enum dicom_visit_action act_dummy(struct basic_ctx *c, struct dicom_elem *e,
				       const char *vr)
{
	const char *dummy = dummy_for_vr(vr);
	char *value = NULL;
	int present = dicom_elem_get_string(e, &value);

	/* Already empty stays empty: that is what Z would give. */
	if (present == 1 && value[0] == '\0') {
		free(value);
		return DCM_VISIT_KEEP;
	}
	free(value);
	if (strcmp(vr, "UI") == 0) {
		map_values(c, e, map_uid);
		return DCM_VISIT_KEEP;
	}
	if (dummy == NULL)
		return empty(c, e);
	put(c, e, dummy);
	return DCM_VISIT_KEEP;
}

static enum dicom_visit_action apply_action(struct basic_ctx *c,
					  struct dicom_elem *e,
					  enum deid_action act, int column)
{
	const char *vr = dicom_elem_vr(e);

	switch (act) {
	case DEID_ACT_NONE:
	case DEID_ACT_K:
	case DEID_ACT_XZU:	/* keep; the UIDs inside get U */
		return DCM_VISIT_KEEP;
	case DEID_ACT_X:
		return DCM_VISIT_REMOVE;
	case DEID_ACT_Z:
	case DEID_ACT_XZ:
		return empty(c, e);
	case DEID_ACT_U:
		map_values(c, e, map_uid);
		return DCM_VISIT_KEEP;
	case DEID_ACT_C:
		return act_clean(c, e, vr, column);
	case DEID_ACT_D:
	case DEID_ACT_XD:
	case DEID_ACT_XZD:
	case DEID_ACT_ZD:
		/* A dummy sequence could only echo what was there: empty. */
		if (strcmp(vr, "SQ") == 0)
			return empty(c, e);
		return act_dummy(c, e, vr);
	}
	return DCM_VISIT_KEEP;
}

/* Private data is removed unless Retain Safe Private lists it as
 * "CREATOR:gggg,xxee". */
static bool safe_private(const struct basic_ctx *c, struct dicom_elem *e)
{
	uint32_t tag = dicom_elem_tag(e);
	const char *creator = dicom_elem_private_creator(e);

	if (!(c->opts->options & DEID_RETAIN_SAFE_PRIVATE) || creator[0] == '\0')
		return false;
	for (const char *const *p = c->opts->safe_private; p && *p; p++) {
		const char *colon = strrchr(*p, ':');
		unsigned g, el;
		char x1, x2;

		if (colon == NULL || strncmp(*p, creator, (size_t)(colon - *p)) != 0 ||
		    strlen(creator) != (size_t)(colon - *p) ||
		    sscanf(colon + 1, "%4x,%c%c%2x", &g, &x1, &x2, &el) != 4)
			continue;
		if (g != DCM_GROUP(tag))
			continue;
		/* A creator element stays when any of its entries does. */
		if (DCM_ELEMENT(tag) <= 0x00ff || (DCM_ELEMENT(tag) & 0xff) == el)
			return true;
	}
	return false;
}

static enum dicom_visit_action visit_basic(void *ctx, struct dicom_elem *e)
{
	struct basic_ctx *c = ctx;
	uint32_t tag = dicom_elem_tag(e);
	const struct deid_rule *rule;
	int column = -1;

	/* Depth first: back at the cleaned sequence's level means out of it. */
	if (c->clean_below >= 0 && dicom_elem_depth(e) <= c->clean_below)
		c->clean_below = -1;
	if (DCM_GROUP(tag) & 1)
		return safe_private(c, e) ? DCM_VISIT_KEEP : DCM_VISIT_REMOVE;
	if (tag == TAG_PatientID) {
		put(c, e, c->new_id);
		return DCM_VISIT_KEEP;
	}
	if (tag == TAG_PatientName) {
		put(c, e, c->new_name);
		return DCM_VISIT_KEEP;
	}
	rule = find_rule(tag);
	if (rule == NULL) {
		if (c->clean_below >= 0 && is_text_vr(dicom_elem_vr(e)))
			clean_element(c, e);
		return DCM_VISIT_KEEP;
	}
	return apply_action(c, e, effective_action(rule, c->opts->options, &column),
			    column);
}

/* ---- basic: before and after the walk ---- */

/* Names, IDs and the birth date wherever they occur, before anything
 * changes: Clean Descriptors removes them from the text that stays. */
static enum dicom_visit_action collect_identifiers(void *ctx, struct dicom_elem *e)
{
	struct tokens *t = ctx;
	uint32_t tag = dicom_elem_tag(e);
	char *value = NULL;

	if (tag != TAG_PatientName && tag != TAG_PatientID &&
	    tag != TAG_PatientBirthDate && tag != DCM_TAG(0x0010, 0x1000) &&
	    tag != DCM_TAG(0x0010, 0x1001) && tag != DCM_TAG(0x0010, 0x1005) &&
	    tag != DCM_TAG(0x0010, 0x1060))
		return DCM_VISIT_KEEP;
	if (dicom_elem_get_string(e, &value) == 1 && value[0] != '\0') {
		if (tag == TAG_PatientBirthDate)
			add_date_tokens(t, value);
		else
			add_multi(t, value, strcmp(dicom_elem_vr(e), "PN") == 0);
	}
	free(value);
	return DCM_VISIT_KEEP;
}

static bool listed(const char *value, const char *const *list)
{
	for (const char *const *p = list; p && *p; p++)
		if (strcmp(value, *p) == 0)
			return true;
	return false;
}

/* Burned-in text survives every header rule: refuse what says it has some,
 * and, when it does not say, kinds of objects that often do. */
static int check_burned_in(const struct deid_options *o, struct dicom_file *file,
			   struct error *err)
{
	static const char *const modalities[] = { "US", "SC", "OT", "XC", "ES", NULL };
	static const char *const classes[] = {
		"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
		"1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
		"1.2.840.10008.5.1.4.1.1.7.4", NULL };
	char *burned = NULL, *modality = NULL, *sop_class = NULL;
	int rc = 0;

	if (o->allow_burned_in)
		return 0;
	if (dicom_get_string(file, DCM_TAG(0x0028, 0x0301), &burned) == 1 &&
	    burned[0] != '\0') {
		if (strcmp(burned, "NO") != 0)
			rc = error_set(err, ERROR_INPUT, 0, "burned-in annotation "
				       "(BurnedInAnnotation = %s)",
				       strcmp(burned, "YES") == 0 ? "YES" : "not NO");
	} else {
		dicom_get_string(file, TAG_Modality, &modality);
		dicom_get_string(file, TAG_SOPClassUID, &sop_class);
		if (modality && listed(modality, o->burned_in_modalities ?
					o->burned_in_modalities : modalities))
			rc = error_set(err, ERROR_INPUT, 0, "may carry burned-in "
				       "text (Modality %s, BurnedInAnnotation absent)",
				       modality);
		else if (sop_class && listed(sop_class, o->burned_in_sop_classes ?
					     o->burned_in_sop_classes : classes))
			rc = error_set(err, ERROR_INPUT, 0, "may carry burned-in "
				       "text (SOP class %s, BurnedInAnnotation absent)",
				       sop_class);
	}
	free(burned);
	free(modality);
	free(sop_class);
	return rc;
}

/* Undeclared or unconvertible text is rewritten as the adapter read it
 * ('?' for what it could not), so every value is UTF-8 afterwards. */
static enum dicom_visit_action rewrite_as_read(void *ctx, struct dicom_elem *e)
{
	struct basic_ctx *c = ctx;
	char *value = NULL;

	if (is_text_vr(dicom_elem_vr(e)) && dicom_elem_get_string(e, &value) == 1)
		put(c, e, value);
	free(value);
	return DCM_VISIT_KEEP;
}

static int to_utf8(struct basic_ctx *c, struct dicom_file *file, struct error *err)
{
	struct error ignored = ERROR_INIT;

	if (dicom_convert_to_utf8(file, &ignored) == 0)
		return 0;
	if (dicom_visit(file, rewrite_as_read, c, err) == -1)
		return -1;
	if (c->failed) {
		*err = c->err;
		return -1;
	}
	return dicom_put_string(file, TAG_SpecificCharacterSet, "ISO_IR 192", err);
}

static int record_method(const struct deid_options *o, struct basic_ctx *c,
			 struct dicom_file *file, struct error *err)
{
	struct dicom_code codes[1 + DEID_OPTION_COUNT];
	char method[64 * (1 + DEID_OPTION_COUNT)];
	size_t n = 0;
	const char *ltim = "REMOVED";

	codes[n++] = profile_code;
	snprintf(method, sizeof(method), "DICOMSORTD %s BASIC PROFILE",
		 DICOMSORT_VERSION);
	for (unsigned i = 0; i < DEID_OPTION_COUNT; i++) {
		if (!(o->options & (1u << i)))
			continue;
		codes[n++] = option_codes[i];
		strncat(method, "\\", sizeof(method) - strlen(method) - 1);
		strncat(method, option_names[i], sizeof(method) - strlen(method) - 1);
	}
	if (o->options & DEID_RETAIN_FULL_DATES)
		ltim = "UNMODIFIED";
	else if (c->dates_shifted || (o->options & DEID_RETAIN_MODIFIED_DATES))
		ltim = "MODIFIED";
	if (dicom_put_string(file, DCM_TAG(0x0012, 0x0062), "YES", err) == -1 ||
	    dicom_put_string(file, DCM_TAG(0x0012, 0x0063), method, err) == -1 ||
	    dicom_put_code_sequence(file, DCM_TAG(0x0012, 0x0064), codes, n, err) == -1 ||
	    dicom_put_string(file, DCM_TAG(0x0028, 0x0303), ltim, err) == -1)
		return -1;
	return 0;
}

static int apply_basic(const struct deid_options *o, struct dicom_file *file,
		       struct deid_report *report, struct error *err)
{
	struct tokens tokens = { .count = 0 };
	struct basic_ctx c = { .opts = o, .tokens = &tokens, .clean_below = -1 };
	char new_id[65], *id = NULL;
	int rc = -1;

	if (check_burned_in(o, file, err) == -1)
		return -1;
	if (dicom_get_raw(file, TAG_PatientID, &id) != 1) {
		free(id);
		id = strdup("");
	}
	if (id == NULL || new_patient_id(o, id, new_id, sizeof(new_id), report,
					 err) == -1 || report->hold)
		goto out;
	c.new_id = new_id;
	c.new_name = o->patient_name ? o->patient_name : new_id;
	c.shift_days = report->shift_days = shift_days_for(o, id);
	if (dicom_visit(file, collect_identifiers, &tokens, err) == -1 ||
	    to_utf8(&c, file, err) == -1 ||
	    dicom_visit(file, visit_basic, &c, err) == -1)
		goto out;
	if (c.failed) {
		*err = c.err;
		goto out;
	}
	rc = record_method(o, &c, file, err);
out:
	free_tokens(&tokens);
	free(id);
	return rc;
}

int deid_apply(const struct deid_options *opts, struct dicom_file *file,
	       struct deid_report *report, struct error *err)
{
	memset(report, 0, sizeof(*report));
	switch (opts->profile) {
	case DEID_NONE:
		return apply_id_only(opts, file, false, report, err);
	case DEID_SEED:
		return apply_id_only(opts, file, true, report, err);
	case DEID_BASIC:
		return apply_basic(opts, file, report, err);
	}
	return 0;
}
