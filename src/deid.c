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

#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>

#include "dicomsort/fsutil.h"
#include "deid_rules.h"

#define SECRET_MIN 16
#define SECRET_MAX 4096
#define DEFAULT_SHIFT_DAYS 365

struct deid_secret {
	size_t len;
	unsigned char key[SECRET_MAX];
	/* HMAC-SHA-256 keyed once: SHA-256 states after the key's inner
	 * and outer pad blocks. OpenSSL 3's one-shot HMAC() looks the
	 * algorithms up on every call, and a copy of a keyed EVP_MAC_CTX
	 * costs 1.2 us; copying two digest states costs 0.3 us, and basic
	 * hashes every UID of every file. Read only once loaded (workers
	 * share it); NULL: fall back to HMAC(). */
	EVP_MD_CTX *inner, *outer;
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

static void keyed_hash(const struct deid_secret *s, const char *domain,
		       const char *text, unsigned char out[32]);

/* The pad states of HMAC (RFC 2104) for s->key, checked against
 * OpenSSL's HMAC() once: a pseudonym must never depend on which way it
 * was computed. */
static void keyed_states(struct deid_secret *s)
{
	unsigned char key[64] = { 0 }, pad[64], mine[32], theirs[32];
	unsigned int len = 32;
	static const unsigned char probe[] = "check\0probe";
	bool ok;

	if (s->len > sizeof(key))	/* a long key is hashed first */
		ok = EVP_Digest(s->key, s->len, key, NULL, EVP_sha256(), NULL) == 1;
	else
		ok = (memcpy(key, s->key, s->len), true);
	s->inner = EVP_MD_CTX_new();
	s->outer = EVP_MD_CTX_new();
	ok = ok && s->inner != NULL && s->outer != NULL;
	for (int i = 0; i < 64; i++)
		pad[i] = key[i] ^ 0x36;
	ok = ok && EVP_DigestInit_ex(s->inner, EVP_sha256(), NULL) == 1 &&
	     EVP_DigestUpdate(s->inner, pad, sizeof(pad)) == 1;
	for (int i = 0; i < 64; i++)
		pad[i] = key[i] ^ 0x5c;
	ok = ok && EVP_DigestInit_ex(s->outer, EVP_sha256(), NULL) == 1 &&
	     EVP_DigestUpdate(s->outer, pad, sizeof(pad)) == 1;
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(pad, sizeof(pad));
	if (ok) {
		keyed_hash(s, "check", "probe", mine);
		ok = HMAC(EVP_sha256(), s->key, (int)s->len, probe,
			  sizeof(probe) - 1, theirs, &len) != NULL &&
		     memcmp(mine, theirs, sizeof(mine)) == 0;
	}
	if (!ok) {
		EVP_MD_CTX_free(s->inner);
		EVP_MD_CTX_free(s->outer);
		s->inner = s->outer = NULL;
	}
}

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
	keyed_states(s);
	*out = s;
	return 0;
}

void deid_secret_free(struct deid_secret *secret)
{
	if (secret == NULL)
		return;
	EVP_MD_CTX_free(secret->inner);
	EVP_MD_CTX_free(secret->outer);
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
	if (s->inner != NULL) {
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		unsigned char h[32];
		unsigned int got = 0;
		bool ok = ctx != NULL && EVP_MD_CTX_copy_ex(ctx, s->inner) == 1 &&
			  EVP_DigestUpdate(ctx, buf, dl + 1 + tl) == 1 &&
			  EVP_DigestFinal_ex(ctx, h, &got) == 1 && got == 32 &&
			  EVP_MD_CTX_copy_ex(ctx, s->outer) == 1 &&
			  EVP_DigestUpdate(ctx, h, sizeof(h)) == 1 &&
			  EVP_DigestFinal_ex(ctx, out, &got) == 1 && got == 32;

		EVP_MD_CTX_free(ctx);
		OPENSSL_cleanse(h, sizeof(h));
		if (ok)
			return;
	}
	HMAC(EVP_sha256(), s->key, (int)s->len, buf, dl + 1 + tl, out, &len);
}

/* "2.25." and the first 128 bits of the hash in decimal (<= 39 digits). */
static void pseudonym_uid(const struct deid_secret *s, const char *uid,
			  char *out, size_t len)
{
	unsigned char h[32];
	unsigned __int128 num = 0;
	char digits[48];
	size_t nd = sizeof(digits);

	keyed_hash(s, "uid", uid, h);
	for (size_t i = 0; i < 16; i++)
		num = num << 8 | h[i];
	digits[--nd] = '\0';
	do {
		digits[--nd] = (char)('0' + (unsigned)(num % 10));
		num /= 10;
	} while (num != 0);
	/* "2.25." in front and one copy, not snprintf(): basic maps every
	 * UID of every file. At most 39 digits: room for the prefix. */
	nd -= 5;
	memcpy(digits + nd, "2.25.", 5);
	if (len > 0) {
		size_t n = sizeof(digits) - 1 - nd;

		if (n > len - 1)	/* snprintf()'s truncation */
			n = len - 1;
		memcpy(out, digits + nd, n);
		out[n] = '\0';
	}
}

static void pseudonym_id(const struct deid_options *o, const char *id,
			 char *out, size_t len)
{
	unsigned char h[32];

	static const char hex[] = "0123456789ABCDEF";
	char tail[13];

	keyed_hash(o->secret, "patient-id", id, h);
	for (int i = 0; i < 6; i++) {	/* %02X six times, without printf */
		tail[2 * i] = hex[h[i] >> 4];
		tail[2 * i + 1] = hex[h[i] & 15];
	}
	tail[12] = '\0';
	snprintf(out, len, "%s%s",
		 o->pseudonym_prefix ? o->pseudonym_prefix : "ANON", tail);
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

	fsutil_copy_str(out, len, mapped != NULL ? mapped : id);
	if (mapped != NULL)
		return 0;
	if (o->table == NULL && o->profile != DEID_BASIC &&
	    o->unknown_id == DEID_UNKNOWN_DEFAULT)
		return 0;	/* nothing to map against: the original's way */
	/* Only a table can miss an ID: without one there is nothing to list
	 * in the batch's log, and no original ID is kept. */
	if (o->table != NULL) {
		report->id_unmapped = true;
		snprintf(report->original_id, sizeof(report->original_id), "%s", id);
	}
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

	/* Like the original: only attributes that are there are touched.
	 * One that is there but cannot be read rejects the object. */
	switch (dicom_get_raw(file, TAG_PatientBirthDate, &value)) {
	case 1:
		rc = dicom_empty(file, TAG_PatientBirthDate, err);
		break;
	case -1:
		rc = error_set(err, ERROR_INPUT, 0, "PatientBirthDate cannot be read");
		break;
	}
	free(value);
	value = NULL;
	switch (rc == 0 ? dicom_get_raw(file, TAG_PatientName, &value) : 0) {
	case 1:
		rc = dicom_put_string(file, TAG_PatientName, "ANONYMIZED", err);
		break;
	case -1:
		rc = error_set(err, ERROR_INPUT, 0, "PatientName cannot be read");
		break;
	}
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
	switch (dicom_get_raw(file, TAG_PatientID, &id)) {
	case 0:
		return 0;
	case -1:
		free(id);
		if (!seed && o->table == NULL)
			return 0;	/* nothing would read it */
		return error_set(err, ERROR_INPUT, 0, "PatientID cannot be read");
	}
	if (new_patient_id(o, id, new_id, sizeof(new_id), report, err) == -1)
		rc = -1;
	else if (!report->hold && strcmp(new_id, id) != 0)
		rc = dicom_put_string(file, TAG_PatientID, new_id, err);
	free(id);
	return rc;
}

/* ---- basic: identifying strings, for Clean Descriptors ---- */

/*
 * Text is compared as Unicode code points after compatibility
 * decomposition (NFKD: full-width letters, ligatures, superscripts and
 * the like become their plain forms), without combining marks (diacritics:
 * "Müller" matches "Muller"), case folded (full folding: "ß" matches
 * "ss"), with separators (whatever is neither a letter nor a digit in any
 * script) ignored: "Müller" matches "MÜLLER" and "ｍｕｌｌｅｒ", "PAT_0042"
 * matches "PAT0042". Transliterations ("MUELLER") are not matched.
 */

struct token {
	uint32_t *cp;		/* folded code points, no separators */
	size_t len;
};

/* Identifying tokens a file may bring. Each is looked for at every
 * position of every cleaned value, and a new one is compared with all so
 * far: a file naming 20,000 people took 5.7 s, growing with the square.
 * Real objects bring a few dozen; past the bound, cleaning blanks the
 * values instead (nothing identifying can survive that). */
#define MAX_TOKENS 256

struct tokens {
	struct token *list;
	size_t count, cap;
	bool failed;		/* out of memory, or more than MAX_TOKENS:
				   clean everything away */
	bool unreadable;	/* a value could not be read: reject */
};

/* Decode one UTF-8 character at s (not at its end): its code point, its
 * length in *n. A byte that does not start a valid sequence stands for
 * itself (U+DC00 + byte), so any input works. */
static uint32_t next_char(const unsigned char *s, size_t *n)
{
	uint32_t c = s[0];
	size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ?
		     3 : (c & 0xF8) == 0xF0 ? 4 : 0;

	if (len == 1) {
		*n = 1;
		return c;
	}
	if (len == 0)
		goto invalid;
	c &= 0x3F >> (len - 1);
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			goto invalid;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if (c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		goto invalid;
	*n = len;
	return c;
invalid:
	*n = 1;
	return 0xDC00 + s[0];
}

static bool is_separator(uint32_t c)
{
	if (c < 0x80)
		return !isalnum((int)c);
	if (c >= 0xDC80 && c <= 0xDCFF)	/* an undecodable byte: text */
		return false;
	return !uc_is_alnum(c);
}

/* Folded code points of a text, with the byte offset each came from. */
struct folded {
	uint32_t *cp;
	size_t *off;		/* NULL when not wanted */
	size_t n, cap;
	bool failed;
};

static void push_folded(struct folded *f, uint32_t c, size_t off)
{
	if (f->failed || is_separator(c))
		return;
	if (f->n + 1 >= f->cap) {
		size_t cap = f->cap * 2 + 16;
		uint32_t *cp = realloc(f->cp, cap * sizeof(*cp));
		size_t *o = NULL;

		if (cp != NULL)
			f->cp = cp;
		if (cp != NULL && f->off != NULL) {
			o = realloc(f->off, cap * sizeof(*o));
			if (o != NULL)
				f->off = o;
		}
		if (cp == NULL || (f->off != NULL && o == NULL)) {
			f->failed = true;
			return;
		}
		f->cap = cap;
	}
	if (f->off != NULL)
		f->off[f->n] = off;
	f->cp[f->n++] = c;
}

/* One character: decomposed (NFKD), marks dropped, case folded. */
static void fold_char(struct folded *f, uint32_t c, size_t off)
{
	uint32_t dec[32], cf[16];
	size_t nd = sizeof(dec) / sizeof(*dec);
	uint32_t *d;

	if (c < 0x80 || (c >= 0xDC80 && c <= 0xDCFF)) {
		push_folded(f, c < 0x80 ? (uint32_t)tolower((int)c) : c, off);
		return;
	}
	d = u32_normalize(UNINORM_NFKD, &c, 1, dec, &nd);
	if (d == NULL) {
		nd = 1;
		d = dec;
		dec[0] = c;
	}
	for (size_t i = 0; i < nd; i++) {
		size_t nc = sizeof(cf) / sizeof(*cf);
		uint32_t *r;

		if (uc_is_general_category(d[i], UC_CATEGORY_M))
			continue;	/* a diacritic */
		r = u32_casefold(&d[i], 1, NULL, NULL, cf, &nc);
		if (r == NULL) {
			push_folded(f, d[i], off);
			continue;
		}
		for (size_t k = 0; k < nc; k++)
			push_folded(f, r[k], off);
		if (r != cf)
			free(r);
	}
	if (d != dec)
		free(d);
}

/* The text as folded code points, without separators; *offsets (if not
 * NULL) gets the byte offset of each, plus one for the end. *cps is NULL
 * when out of memory. */
static size_t fold_text(const char *text, size_t len, uint32_t **cps,
			size_t **offsets)
{
	const unsigned char *s = (const unsigned char *)text;
	struct folded f = { .cap = len + 1 };
	size_t i = 0;

	f.cp = malloc(f.cap * sizeof(*f.cp));
	f.off = offsets ? malloc(f.cap * sizeof(*f.off)) : NULL;
	f.failed = f.cp == NULL || (offsets && f.off == NULL);
	while (!f.failed && i < len && s[i]) {
		size_t step;
		uint32_t c = next_char(s + i, &step);

		if (i + step > len)
			step = len - i;
		fold_char(&f, c, i);
		i += step;
	}
	if (f.failed) {
		free(f.cp);
		free(f.off);
		*cps = NULL;
		if (offsets)
			*offsets = NULL;
		return 0;
	}
	if (offsets) {
		f.off[f.n] = i;
		*offsets = f.off;
	}
	*cps = f.cp;
	return f.n;
}

static void add_token(struct tokens *t, const char *text, size_t len)
{
	struct token tok;

	if (t->failed)
		return;
	tok.len = fold_text(text, len, &tok.cp, NULL);
	if (tok.cp == NULL) {
		t->failed = true;
		return;
	}
	if (tok.len < 2) {	/* an initial would erase letters everywhere */
		free(tok.cp);
		return;
	}
	for (size_t i = 0; i < t->count; i++) {
		if (t->list[i].len == tok.len &&
		    memcmp(t->list[i].cp, tok.cp, tok.len * sizeof(*tok.cp)) == 0) {
			free(tok.cp);
			return;
		}
	}
	if (t->count == MAX_TOKENS) {
		free(tok.cp);
		t->failed = true;
		return;
	}
	if (t->count == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 32;
		struct token *list = realloc(t->list, cap * sizeof(*list));

		if (list == NULL) {
			free(tok.cp);
			t->failed = true;
			return;
		}
		t->list = list;
		t->cap = cap;
	}
	t->list[t->count++] = tok;
}

/* A name both whole and by its parts ("Doe^John" -> doejohn, doe, john). */
/* The usual ASCII transliterations of letters whose diacritic the
 * folding drops ("Müller" also as "Mueller"); NULL if value has none. */
static char *transliterated(const char *value)
{
	static const struct { const char *from, *to; } map[] = {
		{ "\xc3\xa4", "ae" }, { "\xc3\xb6", "oe" }, { "\xc3\xbc", "ue" },
		{ "\xc3\x84", "AE" }, { "\xc3\x96", "OE" }, { "\xc3\x9c", "UE" },
		{ "\xc3\xb8", "oe" }, { "\xc3\x98", "OE" }, { "\xc3\xa5", "aa" },
		{ "\xc3\x85", "AA" }, { "\xc3\xa6", "ae" }, { "\xc3\x86", "AE" },
	};
	size_t len, o = 0;
	bool changed = false;
	char *out;

	/* Every letter above starts with 0xC3: most names have none, and
	 * basic reads every name of every file. */
	if (strchr(value, '\xc3') == NULL)
		return NULL;
	len = strlen(value);
	out = malloc(len + 1);	/* 2 bytes become 2 */
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len;) {
		size_t k = sizeof(map) / sizeof(*map);

		if (value[i] == '\xc3')
			for (k = 0; k < sizeof(map) / sizeof(*map); k++)
				if (value[i + 1] == map[k].from[1])
					break;
		if (k < sizeof(map) / sizeof(*map)) {
			memcpy(out + o, map[k].to, 2);
			o += 2;
			i += 2;
			changed = true;
		} else {
			out[o++] = value[i++];
		}
	}
	out[o] = '\0';
	if (!changed) {
		free(out);
		return NULL;
	}
	return out;
}

static void add_name_parts(struct tokens *t, const char *value);

static void add_name_tokens(struct tokens *t, const char *value)
{
	char *other = transliterated(value);

	add_name_parts(t, value);
	if (other != NULL)
		add_name_parts(t, other);
	free(other);
}

static void add_name_parts(struct tokens *t, const char *value)
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

/* A word that identifies on its own: 4+ characters with a letter, or 6+
 * digits (shorter numbers occur everywhere: house numbers, slice sizes). */
static bool distinctive_word(const char *w, size_t n)
{
	size_t letters = 0, chars = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)w[i];

		if ((ch & 0xC0) != 0x80)
			chars++;
		if (!isdigit(ch))
			letters++;
	}
	return letters > 0 ? chars >= 4 : chars >= 6;
}

/* Free text that identifies (addresses, institutions, stations): whole,
 * and each distinctive word of it. */
static void add_text_tokens(struct tokens *t, const char *value)
{
	const unsigned char *p = (const unsigned char *)value;

	add_token(t, value, strlen(value));
	while (*p) {
		size_t n = 0;

		while (p[n] && !(p[n] < 0x80 && !isalnum(p[n])))
			n++;
		if (n > 0 && distinctive_word((const char *)p, n))
			add_token(t, (const char *)p, n);
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
	/* The first 8 bytes hold no NUL (strlen above): plain copies, not
	 * snprintf(), which was a visible share of every file's walk. */
	memcpy(buf, da + 6, 2);
	memcpy(buf + 2, da + 4, 2);
	memcpy(buf + 4, da, 4);
	add_token(t, buf, 8);
	memcpy(buf, da + 4, 2);
	memcpy(buf + 2, da + 6, 2);
	add_token(t, buf, 8);
}

/* WHOLE: the value as it is; ID: the same, if it is distinctive enough
 * to be looked for (StudyID "1" is not); NAME: whole and by its parts;
 * TEXT: whole and each distinctive word. */
/* Each date of a DA/DT value (multiple values, range ends). */
static void add_date_values(struct tokens *t, const char *value)
{
	const char *p = value;

	while (*p) {
		size_t n = strspn(p, "0123456789");

		if (n >= 8) {
			char da[9];

			memcpy(da, p, 8);	/* n >= 8 digits */
			da[8] = '\0';
			add_date_tokens(t, da);
		}
		p += n;
		p += strcspn(p, "0123456789");
	}
}

enum token_kind { TOKEN_WHOLE, TOKEN_ID, TOKEN_NAME, TOKEN_TEXT };

static void add_multi(struct tokens *t, const char *value, enum token_kind kind)
{
	const char *p = value;

	while (*p) {
		size_t n = strcspn(p, "\\");
		char *part = strndup(p, n);

		if (part == NULL) {
			t->failed = true;
			return;
		}
		if (kind == TOKEN_NAME)
			add_name_tokens(t, part);
		else if (kind == TOKEN_TEXT)
			add_text_tokens(t, part);
		else if (kind == TOKEN_ID && !distinctive_word(part, n))
			;	/* too short to tell from any other text */
		else
			add_token(t, part, n);
		free(part);
		p += n;
		if (*p)
			p++;
	}
}

static void free_tokens(struct tokens *t)
{
	for (size_t i = 0; i < t->count; i++)
		free(t->list[i].cp);
	free(t->list);
	t->list = NULL;
	t->count = t->cap = 0;
}

/* Byte offset just after the k-th folded character of in. */
static size_t char_end(const char *in, size_t len, const size_t *off, size_t k)
{
	size_t step;

	next_char((const unsigned char *)in + off[k], &step);
	return off[k] + step < len ? off[k] + step : len;
}

/* Remove every occurrence of every token, in any case or separator form;
 * the separators around a match stay. NULL when out of memory. */
static char *clean_text(const char *in, const struct tokens *t)
{
	size_t len = strlen(in), o = 0, n, *off = NULL, i = 0, k = 0;
	uint32_t *cp = NULL;
	char *out;

	if (t->failed)
		return strdup("");
	out = malloc(len + 1);
	n = fold_text(in, len, &cp, &off);
	if (out == NULL || cp == NULL) {
		free(out);
		free(cp);
		free(off);
		return NULL;
	}
	/* k: the next folded character; i: the next input byte to copy. */
	while (k < n) {
		size_t best = 0, end;

		for (size_t j = 0; j < t->count; j++) {
			const struct token *tok = &t->list[j];

			if (tok->len > best && tok->len <= n - k &&
			    memcmp(cp + k, tok->cp, tok->len * sizeof(*cp)) == 0)
				best = tok->len;
		}
		if (best == 0) {
			end = char_end(in, len, off, k);
			while (i < end)
				out[o++] = in[i++];
			k++;
			continue;
		}
		while (i < off[k])
			out[o++] = in[i++];
		i = char_end(in, len, off, k + best - 1);
		k += best;
	}
	while (i < len)
		out[o++] = in[i++];
	out[o] = '\0';
	free(cp);
	free(off);
	return out;
}

/* ---- basic: the rules ---- */

const struct deid_rule *deid_rule_for(uint32_t tag)
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

/* How much of the value an option code keeps: when two chosen options
 * have different codes for one row (Retain Device Identity keeps a
 * calibration date that Modified Dates shifts), the one that keeps less
 * wins. */
int deid_retention(enum deid_action act)
{
	return act == DEID_ACT_K ? 2 : act == DEID_ACT_C ? 1 : 0;
}

/* The action for this row under the chosen options; *column says which
 * option decided (-1: the Basic Profile). */
enum deid_action deid_rule_action(const struct deid_rule *r,
				  unsigned options, int *column)
{
	enum deid_action act = r->basic;

	*column = -1;
	for (int c = 0; c < DEID_COL_COUNT; c++) {
		if (!(options & (1u << c)) || r->option[c] == DEID_ACT_NONE)
			continue;
		if (*column == -1 ||
		    deid_retention(r->option[c]) < deid_retention(act)) {
			*column = c;
			act = r->option[c];
		}
	}
	return act;
}

struct basic_ctx {
	const struct deid_options *opts;
	const struct tokens *tokens;
	const char *new_id;
	const char *new_name;
	int shift_days;
	int clean_below;	/* depth of a sequence whose text is cleaned */
	int dummy_below;	/* depth of a sequence reduced to one dummy item */
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
		{ "UT", "ANONYMIZED" }, { "US", "0" }, { "SS", "0" }, { "UL", "0" },
		{ "SL", "0" }, { "FL", "0" }, { "FD", "0" }, { "UV", "0" },
		{ "SV", "0" },
	};

	for (size_t i = 0; i < sizeof(dummies) / sizeof(*dummies); i++)
		if (strcmp(vr, dummies[i].vr) == 0)
			return dummies[i].value;
	return NULL;	/* AT, SQ: emptied; binary VRs: put_binary_dummy() */
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

/* A value the adapter could not read (not one that is absent): reads
 * fail closed, the object is rejected rather than passed through with a
 * value no rule could see. */
static void unreadable(struct basic_ctx *c)
{
	struct error err = ERROR_INIT;

	error_set(&err, ERROR_INPUT, 0, "an attribute value cannot be read");
	fail(c, &err);
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
	int rc = dicom_elem_get_string(e, &value);

	if (rc != 1 || value[0] == '\0') {
		if (rc == -1)
			unreadable(c);
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

/* A UID of the DICOM registry names a class, a syntax or a code scheme,
 * never a patient, study or instance. */
static bool registry_uid(const char *uid)
{
	return strncmp(uid, "1.2.840.10008.", 14) == 0;
}

/* Any UID but a registry one: the same keyed function as U. */
static void map_unregistered_uid(struct basic_ctx *c, const char *uid,
				 char *out, size_t len)
{
	if (registry_uid(uid))
		snprintf(out, len, "%s", uid);
	else
		map_uid(c, uid, out, len);
}

/* UI attributes without a row that name a class or a scheme (private SOP
 * classes included): a vendor's, not anybody's. Every other UI value that
 * is not a registry UID gets remapped. */
static bool class_uid_attribute(uint32_t tag)
{
	static const uint32_t tags[] = {
		DCM_TAG(0x0004, 0x1510),	/* ReferencedSOPClassUIDInFile */
		DCM_TAG(0x0004, 0x1512),	/* ReferencedTransferSyntaxUIDInFile */
		DCM_TAG(0x0008, 0x0016),	/* SOPClassUID */
		DCM_TAG(0x0008, 0x001A),	/* RelatedGeneralSOPClassUID */
		DCM_TAG(0x0008, 0x001B),	/* OriginalSpecializedSOPClassUID */
		DCM_TAG(0x0008, 0x0062),	/* SOPClassesInStudy */
		DCM_TAG(0x0008, 0x010C),	/* CodingSchemeUID */
		DCM_TAG(0x0008, 0x0117),	/* ContextUID */
		DCM_TAG(0x0008, 0x0118),	/* MappingResourceUID */
		DCM_TAG(0x0008, 0x1150),	/* ReferencedSOPClassUID */
	};

	for (size_t i = 0; i < sizeof(tags) / sizeof(*tags); i++)
		if (tags[i] == tag)
			return true;
	return false;
}

/* A UI element no row names (or a private one kept as safe): remap every
 * value but registry UIDs, unless Retain UIDs keeps them all. */
static void map_unlisted_uid(struct basic_ctx *c, struct dicom_elem *e)
{
	if ((c->opts->options & DEID_RETAIN_UIDS) ||
	    class_uid_attribute(dicom_elem_tag(e)))
		return;
	map_values(c, e, map_unregistered_uid);
}

/*
 * Dates under Modified Dates. A value is one date or a range "A-B" (either
 * end may be open); each end moves back by shift_days, keeping its
 * precision and what follows the date part (a DT's time, fraction and UTC
 * offset, unchanged: a shift by whole days leaves them true). A value
 * that is not a valid date (00000000, 20231340, UNKNOWN, ...) never gives
 * a malformed one: it becomes the VR's fixed dummy.
 */

#define DATE_DUMMY_DA "19000101"
#define DATE_DUMMY_DT "19000101000000"

static bool all_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

static int days_in_month(int year, int month)
{
	static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;

	return month == 2 && leap ? 29 : days[month - 1];
}

/* Length of one DT at v, range separator excluded: YYYY[MM[DD[HH[MM[SS
 * [.F]]]]]] and an optional &ZZXX (an offset of at most 14 hours, so
 * "2021-2022" is a range, "...-0500" an offset). */
static size_t dt_length(const char *v)
{
	size_t n = strspn(v, "0123456789");

	if (n == 14 && v[n] == '.')
		n += 1 + strspn(v + n + 1, "0123456789");
	if ((v[n] == '+' || v[n] == '-') && all_digits(v + n + 1, 4) &&
	    (v[n + 5] == '\0' || v[n + 5] == '-') &&
	    (v[n + 1] - '0') * 10 + (v[n + 2] - '0') <= 14)
		n += 5;
	return n;
}

/* Shift the date part (the first digits digits, 4, 6 or 8 of them) of
 * one end of n bytes at v into out; false if it is no valid date. */
static bool shift_one(struct basic_ctx *c, const char *v, size_t n,
		      size_t digits, char *out, size_t len)
{
	struct tm tm = { 0 };
	int year, month = 1, day = 1;
	char full[48];
	time_t t;

	if (digits < 4 || digits > 14 || digits % 2 || digits > n ||
	    !all_digits(v, digits))
		return false;
	if (digits > 8)
		digits = 8;
	year = (v[0] - '0') * 1000 + (v[1] - '0') * 100 + (v[2] - '0') * 10 +
	       (v[3] - '0');
	if (digits >= 6)
		month = (v[4] - '0') * 10 + (v[5] - '0');
	if (digits >= 8)
		day = (v[6] - '0') * 10 + (v[7] - '0');
	if (year < 1 || month < 1 || month > 12 || day < 1 ||
	    day > days_in_month(year, month))
		return false;
	tm.tm_year = year - 1900;
	tm.tm_mon = month - 1;
	tm.tm_mday = day - c->shift_days;
	tm.tm_hour = 12;
	t = timegm(&tm);
	if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 < 1 ||
	    tm.tm_year + 1900 > 9999)
		return false;
	snprintf(full, sizeof(full), "%04d%02d%02d", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday);
	snprintf(out, len, "%.*s%.*s", (int)digits, full, (int)(n - digits),
		 v + digits);
	return true;
}

static void map_date_range(struct basic_ctx *c, const char *value, bool dt,
			   char *out, size_t len)
{
	const char *dummy = dt ? DATE_DUMMY_DT : DATE_DUMMY_DA;
	const char *end[2] = { value, NULL };
	size_t n[2];
	char shifted[2][64] = { "", "" };

	n[0] = dt ? dt_length(value) : strspn(value, "0123456789");
	if (value[n[0]] == '-') {
		end[1] = value + n[0] + 1;
		n[1] = dt ? dt_length(end[1]) : strspn(end[1], "0123456789");
		if (end[1][n[1]] != '\0' || (n[0] == 0 && n[1] == 0))
			goto invalid;
	} else if (value[n[0]] != '\0') {
		goto invalid;
	}
	for (int i = 0; i < 2; i++) {
		if (end[i] == NULL || n[i] == 0)
			continue;	/* an open end of a range */
		if ((!dt && n[i] != 8) ||
		    !shift_one(c, end[i], n[i], strspn(end[i], "0123456789"),
			       shifted[i], sizeof(shifted[i])))
			goto invalid;
	}
	if (end[1] != NULL)
		snprintf(out, len, "%s-%s", shifted[0], shifted[1]);
	else
		snprintf(out, len, "%s", shifted[0]);
	return;
invalid:
	snprintf(out, len, "%s", dummy);
}

static void map_da(struct basic_ctx *c, const char *value, char *out, size_t len)
{
	map_date_range(c, value, false, out, len);
}

static void map_dt(struct basic_ctx *c, const char *value, char *out, size_t len)
{
	map_date_range(c, value, true, out, len);
}

static void shift_dates(struct basic_ctx *c, struct dicom_elem *e, const char *vr)
{
	if (strcmp(vr, "DA") == 0 || strcmp(vr, "DT") == 0) {
		map_values(c, e, strcmp(vr, "DA") == 0 ? map_da : map_dt);
		c->dates_shifted = true;
	}
	/* TM: a shift by whole days leaves times as they are. */
}

static void clean_element(struct basic_ctx *c, struct dicom_elem *e)
{
	char *value = NULL, *cleaned;
	int rc = dicom_elem_get_string(e, &value);

	if (rc != 1) {
		if (rc == -1)
			unreadable(c);
		free(value);
		return;
	}
	cleaned = clean_text(value, c->tokens);
	if (cleaned == NULL) {	/* never keep what could not be cleaned */
		struct error err = ERROR_INIT;

		error_set(&err, ERROR_TRANSIENT, ENOMEM, "cleaning a value");
		fail(c, &err);
	} else if (strcmp(cleaned, value) != 0) {
		put(c, e, cleaned);
	}
	free(cleaned);
	free(value);
}

static bool is_binary_vr(const char *vr)
{
	static const char *const binary[] = { "OB", "OW", "OF", "OD", "OL", "OV",
					       "UN" };

	for (size_t i = 0; i < sizeof(binary) / sizeof(*binary); i++)
		if (strcmp(vr, binary[i]) == 0)
			return true;
	return false;
}

/* A binary value's dummy: as many zero values as it had (at most 64,
 * at least 2 bytes), so it stays non-empty and holds nothing. value is
 * the adapter's '\'-separated form of the original. */
static void put_binary_dummy(struct basic_ctx *c, struct dicom_elem *e,
			     const char *vr, const char *value)
{
	char zeros[2 * 64];
	size_t count = 1;

	for (const char *p = value; *p && count < 64; p++)
		count += *p == '\\';
	if (count < 2 && (strcmp(vr, "OB") == 0 || strcmp(vr, "UN") == 0))
		count = 2;
	for (size_t i = 0; i < count; i++) {
		zeros[2 * i] = '0';
		zeros[2 * i + 1] = '\\';
	}
	zeros[2 * count - 1] = '\0';
	put(c, e, zeros);
}

static enum dicom_visit_action act_dummy(struct basic_ctx *c, struct dicom_elem *e,
				       const char *vr)
{
	const char *dummy = dummy_for_vr(vr);
	char *value = NULL;
	int present = dicom_elem_get_string(e, &value);

	if (present == -1 && strcmp(vr, "SQ") != 0)
		unreadable(c);
	/* Already empty stays empty: that is what Z would give. */
	if (present == 1 && value[0] == '\0') {
		free(value);
		return DCM_VISIT_KEEP;
	}
	if (is_binary_vr(vr) && present == 1) {
		put_binary_dummy(c, e, vr, value);
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

static enum dicom_visit_action act_clean(struct basic_ctx *c, struct dicom_elem *e,
				       const char *vr, int column)
{
	if (strcmp(vr, "SQ") == 0) {
		/* Keep the sequence; text inside it is cleaned. */
		if (c->clean_below < 0)
			c->clean_below = dicom_elem_depth(e);
		return DCM_VISIT_KEEP;
	}
	if (column == DEID_COL_MODIFIED_DATES && is_binary_vr(vr))
		/* A binary timestamp cannot be moved by whole days here:
		 * a zero dummy, so the real date does not survive. */
		return act_dummy(c, e, vr);
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

/*
 * D on a sequence (VerifyingObserverSequence, ContentSequence, ...): an
 * IOD may require it with an item (a verified SR needs its verifying
 * observer), so it keeps one item, the first, whose every value becomes a
 * dummy (dummy_value()). With no item it stays empty.
 */
static enum dicom_visit_action dummy_sequence(struct basic_ctx *c,
					    struct dicom_elem *e)
{
	struct error err = ERROR_INIT;

	if (dicom_elem_keep_first_item(e, &err) == -1)
		fail(c, &err);
	if (c->dummy_below < 0)
		c->dummy_below = dicom_elem_depth(e);
	return DCM_VISIT_KEEP;
}

/* An element of a dummy item: coded strings (CS: relationship and value
 * types, flags) and tag references stay, they say what the item is; a
 * sequence keeps its first item; every other value, codes included (an
 * institution's or a person's code identifies them), becomes its VR's
 * dummy, UIDs are replaced. */
static enum dicom_visit_action dummy_value(struct basic_ctx *c,
					 struct dicom_elem *e)
{
	const char *vr = dicom_elem_vr(e);

	if (strcmp(vr, "SQ") == 0) {
		struct error err = ERROR_INIT;

		if (dicom_elem_keep_first_item(e, &err) == -1)
			fail(c, &err);
		return DCM_VISIT_KEEP;
	}
	if (strcmp(vr, "CS") == 0 || strcmp(vr, "AT") == 0)
		return DCM_VISIT_KEEP;
	if (strcmp(vr, "UN") == 0)
		return DCM_VISIT_REMOVE;
	return act_dummy(c, e, vr);
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
		/* Where X or Z is allowed an empty sequence is the safer
		 * dummy; pure D keeps one item of dummies. */
		if (strcmp(vr, "SQ") == 0)
			return act == DEID_ACT_D ? dummy_sequence(c, e) : empty(c, e);
		return act_dummy(c, e, vr);
	}
	return DCM_VISIT_KEEP;
}

/* Private data is removed unless Retain Safe Private lists it as
 * "CREATOR:gggg,xxee". A private creator element (gggg,00bb) stays when an
 * entry names its creator in its group, so the elements it reserves keep
 * their creator. */
static bool safe_private(const struct basic_ctx *c, struct dicom_elem *e)
{
	uint32_t tag = dicom_elem_tag(e);
	uint16_t el = DCM_ELEMENT(tag);
	bool is_creator = el >= 0x0010 && el <= 0x00ff;
	char *own = NULL;
	const char *creator;
	bool keep = false;

	if (!(c->opts->options & DEID_RETAIN_SAFE_PRIVATE))
		return false;
	if (is_creator) {
		if (dicom_elem_get_string(e, &own) != 1) {
			free(own);
			return false;
		}
		creator = own;
	} else if (el >= 0x1000) {
		creator = dicom_elem_private_creator(e);
	} else {
		return false;	/* group length, (gggg,0001-000f): not data */
	}
	for (const char *const *p = c->opts->safe_private;
	     !keep && creator[0] != '\0' && p && *p; p++) {
		const char *colon = strrchr(*p, ':');
		unsigned g, entry;
		char x1, x2;

		if (colon == NULL || strlen(creator) != (size_t)(colon - *p) ||
		    strncmp(*p, creator, (size_t)(colon - *p)) != 0 ||
		    sscanf(colon + 1, "%4x,%c%c%2x", &g, &x1, &x2, &entry) != 4 ||
		    g != DCM_GROUP(tag))
			continue;
		keep = is_creator || (el & 0xff) == entry;
	}
	free(own);
	return keep;
}

/*
 * Attributes no row names (deid.unlisted = "remove", the default). Every
 * value that can carry free text goes, unless this list keeps it: what
 * codes and image geometry need and what names the vendor, none of it
 * about the patient. Keep it short; README lists it.
 */
static const uint32_t unlisted_allowed[] = {
	DCM_TAG(0x0008, 0x0070),	/* Manufacturer */
	DCM_TAG(0x0008, 0x0100),	/* CodeValue */
	DCM_TAG(0x0008, 0x0102),	/* CodingSchemeDesignator */
	DCM_TAG(0x0008, 0x0103),	/* CodingSchemeVersion */
	DCM_TAG(0x0008, 0x0104),	/* CodeMeaning */
	DCM_TAG(0x0008, 0x0119),	/* LongCodeValue */
	DCM_TAG(0x0008, 0x0120),	/* URNCodeValue */
	DCM_TAG(0x0008, 0x0302),	/* PrivateCreatorReference */
	DCM_TAG(0x0008, 0x1090),	/* ManufacturerModelName */
	DCM_TAG(0x0018, 0x1160),	/* FilterType */
	DCM_TAG(0x0018, 0x1210),	/* ConvolutionKernel */
	DCM_TAG(0x0010, 0x2201),	/* PatientSpeciesDescription */
	DCM_TAG(0x0020, 0x1040),	/* PositionReferenceIndicator */
	DCM_TAG(0x0020, 0x9056),	/* StackID */
	DCM_TAG(0x0020, 0x9213),	/* DimensionIndexPrivateCreator */
	DCM_TAG(0x0020, 0x9238),	/* FunctionalGroupPrivateCreator */
	DCM_TAG(0x0028, 0x1054),	/* RescaleType */
	DCM_TAG(0x0028, 0x1055),	/* WindowCenterWidthExplanation */
	DCM_TAG(0x0028, 0x3004),	/* ModalityLUTType */
};

/* Text VRs that can carry anything typed or copied in. CS (a code, 16
 * upper-case characters) and the number, date and binary VRs cannot
 * carry a name or free text and stay. */
static bool free_text_vr(const char *vr)
{
	static const char *const vrs[] = { "PN", "LO", "SH", "ST", "LT", "UT",
					    "UC", "UR", "AE" };

	/* strcmp() without the calls (every unlisted attribute asks); the
	 * && stops at vr's end. */
	for (size_t i = 0; i < sizeof(vrs) / sizeof(*vrs); i++)
		if (vr[0] == vrs[i][0] && vr[1] == vrs[i][1] && vr[2] == '\0')
			return true;
	return false;
}

/* Attributes no row names: every value that can carry free text goes,
 * unless unlisted_allowed keeps it. A text attribute the dictionary knows
 * is emptied: nothing of its value stays, and an attribute an IOD requires
 * (Type 2) is still there. One no dictionary knows is removed, whatever
 * its VR, and so is a URL. */
static enum dicom_visit_action unlisted(struct basic_ctx *c, struct dicom_elem *e)
{
	uint32_t tag = dicom_elem_tag(e);
	const char *vr = dicom_elem_vr(e);
	char keyword[64];

	for (size_t i = 0; i < sizeof(unlisted_allowed) / sizeof(*unlisted_allowed); i++)
		if (unlisted_allowed[i] == tag)
			return DCM_VISIT_KEEP;
	dicom_elem_keyword(e, keyword, sizeof(keyword));
	if (keyword[0] == '\0')	/* no dictionary knows it */
		return DCM_VISIT_REMOVE;
	if (!free_text_vr(vr))
		return DCM_VISIT_KEEP;
	if (strcmp(vr, "UR") == 0)
		return DCM_VISIT_REMOVE;
	return empty(c, e);
}

/* An overlay group (60xx, even) whose OverlayData the rules remove goes
 * whole: its rows, origin, description and label describe nothing then,
 * and the description and label are free text. */
static bool overlay_group_goes(const struct basic_ctx *c, uint32_t tag)
{
	const struct deid_rule *data;
	int column;

	if ((DCM_GROUP(tag) & 0xFF01) != 0x6000)
		return false;
	data = deid_rule_for(DCM_TAG(DCM_GROUP(tag), 0x3000));
	return data != NULL &&
	       deid_rule_action(data, c->opts->options, &column) == DEID_ACT_X;
}

static enum dicom_visit_action visit_basic(void *ctx, struct dicom_elem *e)
{
	struct basic_ctx *c = ctx;
	uint32_t tag = dicom_elem_tag(e);
	const struct deid_rule *rule;
	enum deid_action act;
	int column = -1;

	/* Depth first: back at the cleaned sequence's level means out of it. */
	if (c->clean_below >= 0 && dicom_elem_depth(e) <= c->clean_below)
		c->clean_below = -1;
	if (c->dummy_below >= 0 && dicom_elem_depth(e) <= c->dummy_below)
		c->dummy_below = -1;
	/* A stored object carries no command group (PS3.10 7.1), and its
	 * meta header only in front of the dataset: group 0000 anywhere and
	 * group 0002 inside the dataset are leftovers of other systems. */
	if (DCM_GROUP(tag) == 0x0000 || DCM_GROUP(tag) == 0x0002)
		return DCM_VISIT_REMOVE;
	if (DCM_GROUP(tag) & 1) {
		if (!safe_private(c, e))
			return DCM_VISIT_REMOVE;
		if (strcmp(dicom_elem_vr(e), "UI") == 0)
			map_unlisted_uid(c, e);
		return DCM_VISIT_KEEP;
	}
	if (overlay_group_goes(c, tag))
		return DCM_VISIT_REMOVE;
	if (c->dummy_below >= 0)
		return dummy_value(c, e);
	if ((tag == TAG_PatientID || tag == TAG_PatientName) &&
	    strcmp(dicom_elem_vr(e), "SQ") == 0) {
		unreadable(c);	/* a name inside a sequence: no rule sees it */
		return DCM_VISIT_REMOVE;
	}
	if (tag == TAG_PatientID) {
		put(c, e, c->new_id);
		return DCM_VISIT_KEEP;
	}
	if (tag == TAG_PatientName) {
		put(c, e, c->new_name);
		return DCM_VISIT_KEEP;
	}
	rule = deid_rule_for(tag);
	/* Still UN after the adapter read it with the dictionary's VR, and
	 * no row for it: nothing can tell what it holds, so it is taken for
	 * identifying, whatever deid.unlisted says. */
	if (rule == NULL && strcmp(dicom_elem_vr(e), "UN") == 0)
		return DCM_VISIT_REMOVE;
	if (rule == NULL && strcmp(dicom_elem_vr(e), "UI") == 0) {
		map_unlisted_uid(c, e);
		return DCM_VISIT_KEEP;
	}
	/* A URL can name a server, a patient, a study: none survives, not
	 * even with deid.unlisted = "keep" (a code's URN is a code). */
	if (rule == NULL && strcmp(dicom_elem_vr(e), "UR") == 0 &&
	    tag != DCM_TAG(0x0008, 0x0120))
		return DCM_VISIT_REMOVE;
	if (rule == NULL) {
		/* Inside a sequence an option keeps and cleans (structured
		 * content, graphics), text is cleaned, not emptied. */
		if (c->clean_below >= 0 && is_text_vr(dicom_elem_vr(e))) {
			clean_element(c, e);
			return DCM_VISIT_KEEP;
		}
		return c->opts->keep_unlisted ? DCM_VISIT_KEEP : unlisted(c, e);
	}
	/* Two statements: the order in which arguments are evaluated is
	 * unspecified, and column is set by deid_rule_action(). */
	act = deid_rule_action(rule, c->opts->options, &column);
	return apply_action(c, e, act, column);
}

/* ---- basic: before and after the walk ---- */

/* What identifies on its own, and how its text is split into tokens.
 * Sorted by tag: collect_identifiers() searches it for every attribute. */
static const struct {
	uint32_t tag;
	enum token_kind kind;
} identifying[] = {
	{ DCM_TAG(0x0008, 0x0050), TOKEN_WHOLE },	/* AccessionNumber */
	{ DCM_TAG(0x0008, 0x0080), TOKEN_TEXT },	/* InstitutionName */
	{ DCM_TAG(0x0008, 0x0081), TOKEN_TEXT },	/* InstitutionAddress */
	{ DCM_TAG(0x0008, 0x0092), TOKEN_TEXT },	/* ReferringPhysicianAddress */
	{ DCM_TAG(0x0008, 0x0094), TOKEN_WHOLE },	/* ReferringPhysicianTelephoneNumbers */
	{ DCM_TAG(0x0008, 0x1010), TOKEN_TEXT },	/* StationName */
	{ DCM_TAG(0x0008, 0x1040), TOKEN_TEXT },	/* InstitutionalDepartmentName */
	{ DCM_TAG(0x0010, 0x0020), TOKEN_WHOLE },	/* PatientID */
	{ DCM_TAG(0x0010, 0x0021), TOKEN_TEXT },	/* IssuerOfPatientID */
	{ DCM_TAG(0x0010, 0x1000), TOKEN_WHOLE },	/* OtherPatientIDs */
	{ DCM_TAG(0x0010, 0x1040), TOKEN_TEXT },	/* PatientAddress */
	{ DCM_TAG(0x0010, 0x1090), TOKEN_ID },	/* MedicalRecordLocator */
	{ DCM_TAG(0x0010, 0x2152), TOKEN_TEXT },	/* RegionOfResidence */
	{ DCM_TAG(0x0010, 0x2154), TOKEN_WHOLE },	/* PatientTelephoneNumbers */
	{ DCM_TAG(0x0010, 0x2155), TOKEN_TEXT },	/* PatientTelecomInformation */
	{ DCM_TAG(0x0020, 0x0010), TOKEN_ID },	/* StudyID */
	{ DCM_TAG(0x0038, 0x0010), TOKEN_ID },	/* AdmissionID */
	{ DCM_TAG(0x0038, 0x0060), TOKEN_ID },	/* ServiceEpisodeID */
	{ DCM_TAG(0x0038, 0x0300), TOKEN_TEXT },	/* CurrentPatientLocation */
	{ DCM_TAG(0x0038, 0x0400), TOKEN_TEXT },	/* PatientInstitutionResidence */
	{ DCM_TAG(0x0040, 0x0009), TOKEN_ID },	/* ScheduledProcedureStepID */
	{ DCM_TAG(0x0040, 0x0253), TOKEN_ID },	/* PerformedProcedureStepID */
	{ DCM_TAG(0x0040, 0x1001), TOKEN_ID },	/* RequestedProcedureID */
	{ DCM_TAG(0x0040, 0x1102), TOKEN_TEXT },	/* PersonAddress */
	{ DCM_TAG(0x0040, 0x1103), TOKEN_WHOLE },	/* PersonTelephoneNumbers */
	{ DCM_TAG(0x0040, 0x2016), TOKEN_ID },	/* PlacerOrderNumberImagingServiceRequest */
	{ DCM_TAG(0x0040, 0x2017), TOKEN_ID },	/* FillerOrderNumberImagingServiceRequest */
	{ DCM_TAG(0x0040, 0xA027), TOKEN_TEXT },	/* VerifyingOrganization */
};

/* Names (every PN, at any level), IDs, the birth date, addresses, telephone
 * numbers, institutions and stations, before anything changes: Clean
 * Descriptors removes them from the text that stays. */
static enum dicom_visit_action collect_identifiers(void *ctx, struct dicom_elem *e)
{
	struct tokens *t = ctx;
	uint32_t tag = dicom_elem_tag(e);
	const char *vr = dicom_elem_vr(e);
	enum token_kind kind = TOKEN_NAME;
	char *value = NULL;

	if (DCM_GROUP(tag) & 1)
		return DCM_VISIT_KEEP;
	if (strcmp(vr, "DA") == 0 || strcmp(vr, "DT") == 0) {
		/* Every date, in its usual spellings: a description saying
		 * "CT 14.03.2021" gives the study date away. */
		int rc = dicom_elem_get_string(e, &value);

		if (rc == 1)
			add_date_values(t, value);
		t->unreadable |= rc == -1;
		free(value);
		return DCM_VISIT_KEEP;
	}
	if (strcmp(vr, "PN") != 0) {
		size_t lo = 0, hi = sizeof(identifying) / sizeof(*identifying);

		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;

			if (identifying[mid].tag < tag)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo == sizeof(identifying) / sizeof(*identifying) ||
		    identifying[lo].tag != tag)
			return DCM_VISIT_KEEP;
		kind = identifying[lo].kind;
	}
	if (strcmp(vr, "SQ") != 0) {
		int rc = dicom_elem_get_string(e, &value);

		if (rc == 1 && value[0] != '\0')
			add_multi(t, value, kind);
		t->unreadable |= rc == -1;
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
	/* OP: ophthalmic photographs carry printed names and dates. */
	static const char *const modalities[] = { "US", "SC", "OT", "XC", "ES",
						  "OP", NULL };
	static const char *const classes[] = {
		"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
		"1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
		"1.2.840.10008.5.1.4.1.1.7.4", NULL };
	char *burned = NULL, *modality = NULL, *sop_class = NULL;
	int rc = 0;

	if (o->allow_burned_in)
		return 0;
	if (dicom_get_string(file, DCM_TAG(0x0028, 0x0301), &burned) == -1)
		return error_set(err, ERROR_INPUT, 0, "BurnedInAnnotation cannot "
				 "be read");
	if (burned != NULL && burned[0] != '\0') {
		if (strcmp(burned, "NO") != 0)
			rc = error_set(err, ERROR_INPUT, 0, "burned-in annotation "
				       "(BurnedInAnnotation = %s)",
				       strcmp(burned, "YES") == 0 ? "YES" : "not NO");
	} else {
		if (dicom_get_string(file, TAG_Modality, &modality) == -1 ||
		    dicom_get_string(file, TAG_SOPClassUID, &sop_class) == -1)
			rc = error_set(err, ERROR_INPUT, 0, "Modality or "
				       "SOPClassUID cannot be read");
		else if (modality && listed(modality, o->burned_in_modalities ?
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

/* An overlay kept in the pixel data's unused high bits (OverlayBitPosition
 * not 0, the old way) survives every header rule, like burned-in text. */
static int check_overlay_bits(const struct deid_options *o,
			      struct dicom_file *file, struct error *err)
{
	if (o->allow_burned_in)
		return 0;
	for (unsigned g = 0x6000; g <= 0x601E; g += 2) {
		char *pos = NULL;
		int rc = dicom_get_string(file, DCM_TAG(g, 0x0102), &pos);
		bool in_pixels = rc == 1 && pos[0] != '\0' && strcmp(pos, "0") != 0;

		free(pos);
		if (rc == -1)
			return error_set(err, ERROR_INPUT, 0, "OverlayBitPosition "
					 "cannot be read");
		if (in_pixels)
			return error_set(err, ERROR_INPUT, 0, "overlay in the pixel "
					 "data's high bits (OverlayBitPosition not 0): "
					 "may carry burned-in text");
	}
	return 0;
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

/*
 * The record of what was done. An earlier tool's record stays: this one's
 * DeidentificationMethod value is appended to the earlier values (cleaned
 * like any description), its codes to the earlier code items.
 */
static int record_method(const struct deid_options *o, struct basic_ctx *c,
			 struct dicom_file *file, const char *earlier,
			 struct error *err)
{
	struct dicom_code codes[1 + DEID_OPTION_COUNT];
	char method[64 * (1 + DEID_OPTION_COUNT)];
	char *before = NULL, *all = NULL;
	size_t n = 0;
	const char *ltim = "REMOVED";
	int rc = -1;

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
	if (earlier != NULL && earlier[0] != '\0') {
		before = clean_text(earlier, c->tokens);
		if (before == NULL || asprintf(&all, "%s\\%s", before, method) == -1) {
			all = NULL;
			error_set(err, ERROR_TRANSIENT, ENOMEM, "de-identification");
			goto out;
		}
	}
	if (dicom_put_string(file, DCM_TAG(0x0012, 0x0062), "YES", err) == -1 ||
	    dicom_put_string(file, DCM_TAG(0x0012, 0x0063), all ? all : method,
			     err) == -1 ||
	    dicom_append_code_sequence(file, DCM_TAG(0x0012, 0x0064), codes, n,
				       err) == -1 ||
	    dicom_put_string(file, DCM_TAG(0x0028, 0x0303), ltim, err) == -1)
		goto out;
	rc = 0;
out:
	free(before);
	free(all);
	return rc;
}

/*
 * An object without a PatientID (absent or empty). Were they all one
 * patient, "", they would share one pseudonym, one folder and one date
 * shift. Instead the key is what the object carries: its PatientName and
 * PatientBirthDate, else its StudyInstanceUID (each study its own
 * patient), else its SOPInstanceUID. The key starts with a control
 * character no PatientID can hold. The unknown-ID policy still rejects
 * or holds such an object; otherwise it is pseudonymized from the key.
 * *key replaces *id (freed).
 */
static int absent_id(const struct deid_options *o, struct dicom_file *file,
		     char **key, char *out, size_t len,
		     struct deid_report *report, struct error *err)
{
	static const uint32_t fallback[] = { TAG_StudyInstanceUID,
					     TAG_SOPInstanceUID };
	char *name = NULL, *birth = NULL, *uid = NULL, *k = NULL;
	int n = -1;

	switch (unknown_policy(o)) {
	case DEID_UNKNOWN_REJECT:
		return error_set(err, ERROR_INPUT, 0, "no PatientID");
	case DEID_UNKNOWN_HOLD:
		report->hold = true;
		return 0;
	default:
		break;
	}
	if (dicom_get_raw(file, TAG_PatientName, &name) == 1 && name[0] != '\0') {
		if (dicom_get_raw(file, TAG_PatientBirthDate, &birth) != 1) {
			free(birth);
			birth = NULL;
		}
		n = asprintf(&k, "\x1fname\x1f%s\x1f%s", name, birth ? birth : "");
	}
	for (size_t i = 0; n == -1 && i < sizeof(fallback) / sizeof(*fallback); i++) {
		if (dicom_get_raw(file, fallback[i], &uid) == 1 && uid[0] != '\0')
			n = asprintf(&k, "\x1fuid\x1f%s", uid);
		free(uid);
		uid = NULL;
	}
	free(name);
	free(birth);
	if (n == -1)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "de-identification");
	free(*key);
	*key = k;
	pseudonym_id(o, k, out, len);
	return 0;
}

static int apply_basic(const struct deid_options *o, struct dicom_file *file,
		       struct deid_report *report, struct error *err)
{
	struct tokens tokens = { .list = NULL };
	struct basic_ctx c = { .opts = o, .tokens = &tokens, .clean_below = -1,
			       .dummy_below = -1 };
	char new_id[65], *id = NULL, *earlier = NULL;
	int rc = -1, stripped = 0;
	bool had_id = true;

	if (check_burned_in(o, file, err) == -1 ||
	    check_overlay_bits(o, file, err) == -1)
		return -1;
	switch (dicom_get_raw(file, TAG_PatientID, &id)) {
	case -1:
		return error_set(err, ERROR_INPUT, 0, "PatientID cannot be read");
	case 0:
		free(id);
		id = strdup("");
		had_id = false;
		break;
	}
	if (id == NULL) {
		error_set(err, ERROR_TRANSIENT, ENOMEM, "de-identification");
		goto out;
	}
	if (id[0] == '\0') {
		if (absent_id(o, file, &id, new_id, sizeof(new_id), report,
			      err) == -1)
			goto out;
	} else if (new_patient_id(o, id, new_id, sizeof(new_id), report,
				  err) == -1) {
		goto out;
	}
	if (report->hold) {	/* untouched: the caller parks it */
		rc = 0;
		goto out;
	}
	c.new_id = new_id;
	c.new_name = o->patient_name ? o->patient_name : new_id;
	c.shift_days = report->shift_days = shift_days_for(o, id);
	if (dicom_visit(file, collect_identifiers, &tokens, err) == -1)
		goto out;
	if (tokens.unreadable) {
		error_set(err, ERROR_INPUT, 0, "an attribute value cannot be read");
		goto out;
	}
	if (dicom_get_string(file, DCM_TAG(0x0012, 0x0063), &earlier) == -1) {
		error_set(err, ERROR_INPUT, 0, "DeidentificationMethod cannot be read");
		goto out;
	}
	if (to_utf8(&c, file, err) == -1 ||
	    dicom_visit(file, visit_basic, &c, err) == -1)
		goto out;
	if (c.failed) {
		*err = c.err;
		goto out;
	}
	/* Without one, the pseudonym is this object's PatientID from now on
	 * (and its folder's name): Type 2, so there should have been one. */
	if (!had_id && dicom_put_string(file, TAG_PatientID, new_id, err) == -1)
		goto out;
	if (dicom_strip_pixel_metadata(file, &stripped, err) == -1)
		goto out;
	rc = record_method(o, &c, file, earlier, err);
	dicom_zero_preamble(file);
out:
	free_tokens(&tokens);
	free(id);
	free(earlier);
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
