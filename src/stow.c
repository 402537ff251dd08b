/*
 * stow.c - the DICOMweb STOW-RS transport (libcurl); contract in delivery.h.
 *
 * Owns: one HTTP request per batch and the reading of its answer. A batch
 * is one multipart/related; type="application/dicom" body whose parts are
 * streamed from the files by a read callback, so memory does not grow with
 * the batch; its Content-Length is known before the first byte is sent (no
 * chunked upload, which some servers refuse). The answer (PS3.18 10.5.3,
 * application/dicom+json) is mapped item by item:
 *   in ReferencedSOPSequence (0008,1199)        DONE (a WarningReason too)
 *   in FailedSOPSequence (0008,1198)            REJECTED, status FailureReason
 *     with FailureReason A7xx or FE00           RETRY (out of resources)
 *   in neither, answer 2xx                      RETRY (the peer did not say)
 *   in neither, answer 4xx naming the data      REJECTED, status the HTTP one
 *     (400, 409, 413 for one file, 422...)
 * and for the whole request:
 *   no connection, timeout, 5xx, 3xx            -1 (retry the batch)
 *   401/403 (credentials), 408/429 (rate)       -1, the text says which
 *   413 for a batch of more than one file       -1: fewer files per request
 *   404/405/406/411/414/415/431: the endpoint,  -1: a wrong stow_url must
 *     not the data, is wrong                    not reject every file
 * err->kind is ERROR_SETUP when only an admin can fix the cause (a
 * credential file's rules, TLS trust, a wrong URL), else ERROR_TRANSIENT;
 * either way the batch is to be retried.
 * Credentials are read from files with the rules of the de-identification
 * secret (deid_secret_load: a regular file, not a symlink, no access for
 * group or others) plus one more: owned by the user we run as, since a
 * token someone else can replace is not ours. Redirects are not followed
 * (they would carry credentials elsewhere); proxies from the environment
 * are not used. Nothing here logs; texts hold no data-set values.
 */
#include "dicomsort/delivery.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STOW_CONNECT_TIMEOUT_S 10
#define STOW_TIMEOUT_S 600
#define STOW_STALL_S 60			/* no byte moved for this long */
/*
 * The answer is held whole and parsed by json-c, whose objects take ten
 * times or more the text's size, on each of a destination's threads: a
 * peer that answers megabytes for a few files could take the daemon's
 * memory. A real answer (PS3.18 10.5.3) is under 1 KiB per instance, so
 * the cap grows with the batch: 256 KiB + 16 KiB per file, 64 MiB at most
 * (for the probe, which discards). A larger answer retries the batch.
 */
#define STOW_ANSWER_MAX (64u << 20)
#define STOW_ANSWER_BASE (256u << 10)
#define STOW_ANSWER_PER_FILE (16u << 10)
#define STOW_CRED_MAX 4096
#define STOW_PART_HEAD_MAX 128

/* The body being sent: parts[i] is items[part_item[i]]. */
struct body {
	struct delivery_item *items;
	size_t *part_item;		/* index into items, per part */
	off_t *part_size;		/* size measured before sending */
	size_t nparts;
	char boundary[48];
	/* read position */
	size_t part;			/* current part; nparts = the trailer */
	int phase;			/* 0 head, 1 file, 2 tail */
	char head[STOW_PART_HEAD_MAX];
	size_t head_len, head_off;
	int fd;
	off_t file_left;
	int failed_errno;		/* why the read callback aborted */
};

struct answer {
	char *buf;
	size_t len, cap;
	size_t max;		/* bytes kept at most (see STOW_ANSWER_BASE) */
	bool too_big;
};

/*
 * libcurl is opened on first use (dlopen), not linked: a dicomsort that
 * forwards nothing never maps it and the 18 libraries it pulls in (TLS,
 * Kerberos, LDAP, SSH, ...), ~7 ms of every start under BIND_NOW. Written
 * once, under curl_once, before any use; read-only afterwards. The
 * package depends on libcurl4 by name (packaging/CMakeLists.txt).
 */
static struct {
	CURLcode (*global_init)(long);
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
	CURLcode (*easy_perform)(CURL *);
	CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
	void (*easy_cleanup)(CURL *);
	const char *(*easy_strerror)(CURLcode);
	struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
	void (*slist_free_all)(struct curl_slist *);
	CURLU *(*url)(void);
	CURLUcode (*url_set)(CURLU *, CURLUPart, const char *, unsigned int);
	CURLUcode (*url_get)(const CURLU *, CURLUPart, char **, unsigned int);
	void (*url_cleanup)(CURLU *);
	void (*free)(void *);
} lc;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static bool curl_symbol(void *lib, const char *name, void *fn, size_t size)
{
	void *sym = dlsym(lib, name);

	if (sym == NULL)
		return false;
	memcpy(fn, &sym, size);	/* object to function pointer, as POSIX allows */
	return true;
}

#define CURL_SYMBOL(lib, field, name) \
	curl_symbol(lib, name, &lc.field, sizeof(lc.field))

/* Open libcurl and run curl_global_init (not thread-safe on every build):
 * once. Nothing of it works unless curl_init_rc is CURLE_OK. */
static void curl_init(void)
{
	void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);

	if (lib == NULL ||
	    !CURL_SYMBOL(lib, global_init, "curl_global_init") ||
	    !CURL_SYMBOL(lib, easy_init, "curl_easy_init") ||
	    !CURL_SYMBOL(lib, easy_setopt, "curl_easy_setopt") ||
	    !CURL_SYMBOL(lib, easy_perform, "curl_easy_perform") ||
	    !CURL_SYMBOL(lib, easy_getinfo, "curl_easy_getinfo") ||
	    !CURL_SYMBOL(lib, easy_cleanup, "curl_easy_cleanup") ||
	    !CURL_SYMBOL(lib, easy_strerror, "curl_easy_strerror") ||
	    !CURL_SYMBOL(lib, slist_append, "curl_slist_append") ||
	    !CURL_SYMBOL(lib, slist_free_all, "curl_slist_free_all") ||
	    !CURL_SYMBOL(lib, url, "curl_url") ||
	    !CURL_SYMBOL(lib, url_set, "curl_url_set") ||
	    !CURL_SYMBOL(lib, url_get, "curl_url_get") ||
	    !CURL_SYMBOL(lib, url_cleanup, "curl_url_cleanup") ||
	    !CURL_SYMBOL(lib, free, "curl_free"))
		return;
	curl_init_rc = lc.global_init(CURL_GLOBAL_DEFAULT);
}

static bool curl_ready(void)
{
	pthread_once(&curl_once, curl_init);
	return curl_init_rc == CURLE_OK;
}

/* From here on every curl_* call goes through the table (the type-check
 * macros of curl.h call the linked function by name). */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#define curl_easy_init lc.easy_init
#define curl_easy_setopt lc.easy_setopt
#define curl_easy_perform lc.easy_perform
#define curl_easy_getinfo lc.easy_getinfo
#define curl_easy_cleanup lc.easy_cleanup
#define curl_easy_strerror lc.easy_strerror
#define curl_slist_append lc.slist_append
#define curl_url lc.url
#define curl_url_set lc.url_set
#define curl_url_get lc.url_get
#define curl_url_cleanup lc.url_cleanup
#define curl_free lc.free

/* A list is only ever made once libcurl is open; NULL needs no call. */
static void slist_free(struct curl_slist *l)
{
	if (l != NULL)
		lc.slist_free_all(l);
}
#define curl_slist_free_all slist_free

/* ---- credentials ---- */

/* Read a credential file into buf (NUL-terminated, trailing newline
 * stripped) with the secret's rules and ownership by the euid. */
static int read_private(const char *path, const char *what, char *buf,
			size_t cap, struct error *err)
{
	struct stat st;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
	if (fd == -1)
		return error_set(err, ERROR_SETUP, errno, "%s %s", what, path);
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		close(fd);
		return error_set(err, ERROR_SETUP, 0, "%s %s: not a regular file",
				 what, path);
	}
	if (st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
		close(fd);
		return error_set(err, ERROR_SETUP, 0, "%s %s: must be owned by "
				 "uid %lu and readable by it alone (chown it; "
				 "chmod 600 it); it is uid %lu, mode %04o", what,
				 path, (unsigned long)geteuid(),
				 (unsigned long)st.st_uid,
				 (unsigned)(st.st_mode & 07777));
	}
	n = read(fd, buf, cap);
	close(fd);
	if (n < 0)
		return error_set(err, ERROR_SETUP, errno, "%s %s", what, path);
	if ((size_t)n == cap) {
		explicit_bzero(buf, cap);
		return error_set(err, ERROR_SETUP, 0, "%s %s: longer than %zu "
				 "bytes", what, path, cap - 1);
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	buf[n] = '\0';
	if (n == 0 || strlen(buf) != (size_t)n || strpbrk(buf, "\r\n") != NULL) {
		explicit_bzero(buf, cap);
		return error_set(err, ERROR_SETUP, 0, "%s %s: must be one "
				 "non-empty line", what, path);
	}
	return 0;
}

/* Add the peer's authentication to h (and *hdrs for a bearer token). */
static int set_auth(CURL *h, const struct stow_peer *peer,
		    struct curl_slist **hdrs, struct error *err)
{
	char cred[STOW_CRED_MAX], line[STOW_CRED_MAX + 32];
	struct curl_slist *l;

	if (peer->token_file != NULL && peer->basic_auth_file != NULL)
		return error_set(err, ERROR_SETUP, 0, "STOW-RS %s: token_file "
				 "and basic_auth_file are exclusive", peer->url);
	if (peer->token_file != NULL) {
		if (read_private(peer->token_file, "token file", cred,
				 sizeof(cred), err) == -1)
			return -1;
		snprintf(line, sizeof(line), "Authorization: Bearer %s", cred);
		l = curl_slist_append(*hdrs, line);
		explicit_bzero(line, sizeof(line));
		explicit_bzero(cred, sizeof(cred));
		if (l == NULL)
			return error_set(err, ERROR_TRANSIENT, ENOMEM, "STOW-RS");
		*hdrs = l;
	}
	if (peer->basic_auth_file != NULL) {
		if (read_private(peer->basic_auth_file, "basic auth file", cred,
				 sizeof(cred), err) == -1)
			return -1;
		if (strchr(cred, ':') == NULL) {
			explicit_bzero(cred, sizeof(cred));
			return error_set(err, ERROR_SETUP, 0, "basic auth file "
					 "%s: not \"user:password\"",
					 peer->basic_auth_file);
		}
		curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		curl_easy_setopt(h, CURLOPT_USERPWD, cred);
		explicit_bzero(cred, sizeof(cred));
	}
	return 0;
}

/* ---- one handle with the peer's transport settings ---- */

static int secs(int v, int dflt)
{
	return v > 0 ? v : dflt;
}

/* A handle for url with TLS, timeouts and auth set; *hdrs gets the
 * headers the caller adds to and frees. */
static CURL *peer_handle(const struct stow_peer *peer, const char *url,
			 struct curl_slist **hdrs, char *curl_err,
			 struct error *err)
{
	CURL *h;

	if (!curl_ready() || (h = curl_easy_init()) == NULL) {
		error_set(err, ERROR_TRANSIENT, 0, "STOW-RS: libcurl does not "
			  "start");
		return NULL;
	}
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_PROXY, "");
	curl_easy_setopt(h, CURLOPT_NETRC, (long)CURL_NETRC_IGNORED);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, peer->tls_verify ? 1L : 0L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, peer->tls_verify ? 2L : 0L);
	if (peer->tls_ca_file != NULL)
		curl_easy_setopt(h, CURLOPT_CAINFO, peer->tls_ca_file);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT,
			 (long)secs(peer->connect_timeout_s,
				    STOW_CONNECT_TIMEOUT_S));
	curl_easy_setopt(h, CURLOPT_TIMEOUT,
			 (long)secs(peer->timeout_s, STOW_TIMEOUT_S));
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)STOW_STALL_S);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "dicomsortd/" DICOMSORT_VERSION);
	if (set_auth(h, peer, hdrs, err) == -1) {
		curl_easy_cleanup(h);
		return NULL;
	}
	return h;
}

/* "scheme://host:port" of url for messages: never its userinfo, path or
 * query. */
static void peer_name(const char *url, char *buf, size_t len)
{
	CURLU *u;
	char *scheme = NULL, *host = NULL, *port = NULL;

	snprintf(buf, len, "the STOW-RS peer");
	if (!curl_ready() || (u = curl_url()) == NULL)
		return;
	if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) ==
	    CURLUE_OK)
		snprintf(buf, len, "%s://%s:%s", scheme, host, port);
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
}

/* ---- the answer ---- */

static size_t answer_max(size_t nparts)
{
	if (nparts >= (STOW_ANSWER_MAX - STOW_ANSWER_BASE) / STOW_ANSWER_PER_FILE)
		return STOW_ANSWER_MAX;
	return STOW_ANSWER_BASE + nparts * STOW_ANSWER_PER_FILE;
}

static size_t answer_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct answer *a = arg;
	size_t n = size * nmemb;
	char *p;

	if (a->len + n + 1 > a->max) {
		a->too_big = true;
		return 0;	/* aborts the transfer */
	}
	if (a->len + n + 1 > a->cap) {
		size_t cap = a->cap ? a->cap : 16384;

		while (cap < a->len + n + 1)
			cap *= 2;
		if ((p = realloc(a->buf, cap)) == NULL)
			return 0;
		a->buf = p;
		a->cap = cap;
	}
	memcpy(a->buf + a->len, data, n);
	a->len += n;
	a->buf[a->len] = '\0';
	return n;
}

/* ---- the body ---- */

static void body_release(struct body *b)
{
	if (b->fd != -1)
		close(b->fd);
	b->fd = -1;
	free(b->part_item);
	free(b->part_size);
}

/* Stat each item's file. A path that is gone or not a regular file can
 * never be sent: REJECTED, not part of the body. Other errors (EMFILE,
 * EIO, EACCES) are ours and transient: -1. */
static int body_plan(struct body *b, struct delivery_item *items, size_t n,
		     struct error *err)
{
	struct stat st;
	size_t i;
	int fd;

	b->items = items;
	b->fd = -1;
	b->part_item = calloc(n ? n : 1, sizeof(*b->part_item));
	b->part_size = calloc(n ? n : 1, sizeof(*b->part_size));
	if (b->part_item == NULL || b->part_size == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "STOW-RS");
	for (i = 0; i < n; i++) {
		items[i].result = DELIVERY_PENDING;
		items[i].status = 0;
		items[i].reason[0] = '\0';
		fd = open(items[i].path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC |
			  O_NOCTTY);
		if (fd == -1 && errno != ENOENT && errno != ELOOP)
			return error_set(err, ERROR_TRANSIENT, errno,
					 "STOW-RS: open %s", items[i].path);
		if (fd != -1 && (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode))) {
			close(fd);
			fd = -1;
		}
		if (fd == -1) {
			items[i].result = DELIVERY_REJECTED;
			items[i].status = 0;
			snprintf(items[i].reason, sizeof(items[i].reason),
				 "not sent: not a regular file we can open");
			continue;
		}
		close(fd);
		b->part_item[b->nparts] = i;
		b->part_size[b->nparts++] = st.st_size;
	}
	return 0;
}

static void body_boundary(struct body *b)
{
	unsigned char r[16];
	size_t i, off;

	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
		/* The boundary must only be absent from the files; a fixed
		 * one with the time and pid is good enough then. */
		snprintf(b->boundary, sizeof(b->boundary),
			 "dicomsortd-%ld-%ld", (long)getpid(), (long)time(NULL));
		return;
	}
	off = (size_t)snprintf(b->boundary, sizeof(b->boundary), "dicomsortd-");
	for (i = 0; i < sizeof(r); i++)
		off += (size_t)snprintf(b->boundary + off,
					sizeof(b->boundary) - off, "%02x", r[i]);
}

static size_t part_head(const struct body *b, char *buf, size_t len)
{
	return (size_t)snprintf(buf, len, "--%s\r\nContent-Type: "
				"application/dicom\r\n\r\n", b->boundary);
}

static curl_off_t body_length(const struct body *b)
{
	char head[STOW_PART_HEAD_MAX];
	curl_off_t total = 0;
	size_t i;

	for (i = 0; i < b->nparts; i++)
		total += (curl_off_t)part_head(b, head, sizeof(head)) +
			 b->part_size[i] + 2;
	return total + (curl_off_t)strlen(b->boundary) + 6; /* --B--\r\n */
}

/* Move to part b->part (or the trailer) and fill head with its text. */
static int body_enter(struct body *b)
{
	struct stat st;

	b->phase = 0;
	b->head_off = 0;
	if (b->part == b->nparts) {
		b->head_len = (size_t)snprintf(b->head, sizeof(b->head),
					       "--%s--\r\n", b->boundary);
		return 0;
	}
	b->head_len = part_head(b, b->head, sizeof(b->head));
	b->fd = open(b->items[b->part_item[b->part]].path,
		     O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
	if (b->fd == -1 || fstat(b->fd, &st) == -1 ||
	    st.st_size != b->part_size[b->part]) {
		/* Gone or changed since we measured it: Content-Length
		 * would be wrong. The next read aborts the transfer. */
		b->failed_errno = b->fd == -1 ? errno : ESTALE;
		if (b->fd != -1)
			close(b->fd);
		b->fd = -1;
		return -1;
	}
	b->file_left = st.st_size;
	return 0;
}

static size_t copy_text(struct body *b, const char *text, size_t len,
			char *dst, size_t room)
{
	size_t n = len - b->head_off;

	if (n > room)
		n = room;
	memcpy(dst, text + b->head_off, n);
	b->head_off += n;
	return n;
}

static size_t body_read(char *dst, size_t size, size_t nitems, void *arg)
{
	struct body *b = arg;
	size_t room = size * nitems, n;
	ssize_t got;

	if (b->failed_errno != 0)
		return CURL_READFUNC_ABORT;
	if (b->part > b->nparts)
		return 0;
	if (b->phase == 0) {
		n = copy_text(b, b->head, b->head_len, dst, room);
		if (b->head_off < b->head_len)
			return n;
		if (b->part == b->nparts) {
			b->part++;
			return n;
		}
		b->phase = 1;
		return n;
	}
	if (b->phase == 1) {
		if (b->file_left == 0) {
			close(b->fd);
			b->fd = -1;
			b->phase = 2;
			b->head_off = 0;
			return body_read(dst, size, nitems, arg);
		}
		if ((off_t)room > b->file_left)
			room = (size_t)b->file_left;
		got = read(b->fd, dst, room);
		if (got <= 0) {
			b->failed_errno = got == 0 ? ESTALE : errno;
			return CURL_READFUNC_ABORT;
		}
		b->file_left -= got;
		return (size_t)got;
	}
	n = copy_text(b, "\r\n", 2, dst, room);
	if (b->head_off == 2) {
		b->part++;
		if (body_enter(b) == -1)
			return n > 0 ? n : CURL_READFUNC_ABORT;
	}
	return n;
}

/* curl rewinds the body before a resend (a redirect it will not follow,
 * an auth retry): start over. */
static int body_seek(void *arg, curl_off_t offset, int origin)
{
	struct body *b = arg;

	if (offset != 0 || origin != SEEK_SET)
		return CURL_SEEKFUNC_CANTSEEK;
	if (b->fd != -1)
		close(b->fd);
	b->fd = -1;
	b->part = 0;
	b->failed_errno = 0;
	return body_enter(b) == 0 ? CURL_SEEKFUNC_OK : CURL_SEEKFUNC_FAIL;
}

/* ---- mapping the answer ---- */

/* The first string of the element tag ("00081155") in item, or NULL. */
static const char *elem_string(struct json_object *item, const char *tag)
{
	struct json_object *e, *v, *s;

	if (!json_object_object_get_ex(item, tag, &e) ||
	    !json_object_object_get_ex(e, "Value", &v) ||
	    !json_object_is_type(v, json_type_array) ||
	    json_object_array_length(v) < 1)
		return NULL;
	s = json_object_array_get_idx(v, 0);
	return json_object_is_type(s, json_type_string) ?
	       json_object_get_string(s) : NULL;
}

/* The first number of the element tag in item; -1 if none. */
static long elem_number(struct json_object *item, const char *tag)
{
	struct json_object *e, *v, *s;

	if (!json_object_object_get_ex(item, tag, &e) ||
	    !json_object_object_get_ex(e, "Value", &v) ||
	    !json_object_is_type(v, json_type_array) ||
	    json_object_array_length(v) < 1)
		return -1;
	s = json_object_array_get_idx(v, 0);
	if (!json_object_is_type(s, json_type_int))
		return -1;
	return (long)json_object_get_int64(s);
}

/* Give the sent items whose SOPInstanceUID is uid the result. Items not
 * sent (already REJECTED locally) are left alone. */
static void mark(struct body *b, const char *uid, enum delivery_result r,
		 long status, const char *what)
{
	struct delivery_item *it;
	size_t i;

	for (i = 0; i < b->nparts; i++) {
		it = &b->items[b->part_item[i]];
		if (strcmp(it->sop_instance_uid, uid) != 0)
			continue;
		it->result = r;
		it->status = status >= 0 ? (unsigned)status : 0;
		if (status >= 0)
			snprintf(it->reason, sizeof(it->reason), "%s %04lXH",
				 what, (unsigned long)status);
		else
			snprintf(it->reason, sizeof(it->reason), "%s", what);
	}
}

/* A FailureReason as DICOM means it (PS3.4 B.2.3, as for a C-STORE):
 * out of resources (A7xx) or cancelled (FE00) is the peer's state, not
 * the data set's, so it is retried; the rest are the data set's. */
static enum delivery_result failure_result(long reason)
{
	if ((reason & 0xFF00) == 0xA700 || reason == 0xFE00)
		return DELIVERY_RETRY;
	return DELIVERY_REJECTED;
}

/* Apply one sequence of the answer: tag "00081199" or "00081198". */
static void apply_sequence(struct body *b, struct json_object *root,
			   const char *tag, bool failed)
{
	struct json_object *e, *v, *item;
	const char *uid;
	size_t i;

	if (!json_object_object_get_ex(root, tag, &e) ||
	    !json_object_object_get_ex(e, "Value", &v) ||
	    !json_object_is_type(v, json_type_array))
		return;
	for (i = 0; i < json_object_array_length(v); i++) {
		item = json_object_array_get_idx(v, i);
		if ((uid = elem_string(item, "00081155")) == NULL)
			continue;
		if (failed)
			mark(b, uid, failure_result(elem_number(item,
								"00081197")),
			     elem_number(item, "00081197"),
			     "in FailedSOPSequence, FailureReason");
		else if (elem_number(item, "00081196") >= 0)
			mark(b, uid, DELIVERY_DONE,
			     elem_number(item, "00081196"),
			     "stored with WarningReason");
		else
			mark(b, uid, DELIVERY_DONE, -1, "stored");
	}
}

/* Parse a DICOM JSON answer and apply both sequences; false if the
 * answer is not a JSON object. */
static bool apply_answer(struct body *b, const struct answer *a)
{
	struct json_object *root;

	if (a->buf == NULL || a->len == 0)
		return false;
	root = json_tokener_parse(a->buf);
	if (root == NULL)
		return false;
	if (!json_object_is_type(root, json_type_object)) {
		json_object_put(root);
		return false;
	}
	apply_sequence(b, root, "00081199", false);
	apply_sequence(b, root, "00081198", true);
	json_object_put(root);
	return true;
}

/* Items sent and still PENDING get r with the HTTP status and why. */
static void rest_of_batch(struct body *b, enum delivery_result r,
			  long http, const char *why)
{
	struct delivery_item *it;
	size_t i;

	for (i = 0; i < b->nparts; i++) {
		it = &b->items[b->part_item[i]];
		if (it->result != DELIVERY_PENDING)
			continue;
		it->result = r;
		it->status = (unsigned)http;
		snprintf(it->reason, sizeof(it->reason), "HTTP %ld: %s", http,
			 why);
	}
}

/* What a whole-request status means; returns -1 (retry the batch, err
 * set) or 0 (items have their results). */
static int map_status(struct body *b, long http, const char *peer,
		      bool parsed, struct error *err)
{
	const char *why = NULL;

	if (http == 401 || http == 403)
		why = "the peer refused our credentials (check token_file "
		      "or basic_auth_file and the account's rights)";
	else if (http == 408 || http == 429)
		why = "the peer is rate limiting or timed out the request; "
		      "retrying later";
	else if (http == 413 && b->nparts > 1)
		why = "request too large for the peer; lower the files per "
		      "request";
	else if (http == 404 || http == 405 || http == 406 || http == 411 ||
		 http == 414 || http == 415 || http == 431)
		why = "the URL does not take STOW-RS requests (is stow_url "
		      "the .../studies endpoint?)";
	else if (http >= 500)
		why = "peer error; retrying later";
	else if (http < 200 || (http >= 300 && http < 400))
		why = "unexpected answer (redirects are not followed; check "
		      "stow_url)";
	if (why != NULL) {
		rest_of_batch(b, DELIVERY_RETRY, http, why);
		return error_set(err, http < 500 && http != 401 && http != 403 &&
				 http != 408 && http != 429 && http != 413 ?
				 ERROR_SETUP : ERROR_TRANSIENT, 0,
				 "STOW-RS to %s: HTTP %ld: %s", peer, http, why);
	}
	if (http < 300)
		rest_of_batch(b, DELIVERY_RETRY, http, parsed ?
			      "not in the peer's answer" :
			      "the peer's answer is not DICOM JSON");
	else
		rest_of_batch(b, DELIVERY_REJECTED, http,
			      "the peer refused the request and did not "
			      "store this instance");
	return 0;
}

static int curl_failure(struct body *b, CURLcode rc, const char *curl_err,
			const char *peer, const struct answer *a,
			struct error *err)
{
	enum error_kind kind = ERROR_TRANSIENT;
	const char *text = curl_err[0] ? curl_err : curl_easy_strerror(rc);

	rest_of_batch(b, DELIVERY_RETRY, 0, "no answer from the peer");
	if (a->too_big)
		return error_set(err, ERROR_TRANSIENT, 0, "STOW-RS to %s: "
				 "answer larger than %zu bytes for %zu files",
				 peer, a->max, b->nparts);
	if (b->failed_errno != 0)
		return error_set(err, ERROR_TRANSIENT, b->failed_errno,
				 "STOW-RS to %s: a file changed or could not "
				 "be read while sending", peer);
	if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE ||
	    rc == CURLE_SSL_CERTPROBLEM || rc == CURLE_UNSUPPORTED_PROTOCOL ||
	    rc == CURLE_URL_MALFORMAT)
		kind = ERROR_SETUP;
	return error_set(err, kind, 0, "STOW-RS to %s: %s", peer, text);
}

/* ---- stow_send ---- */

static int send_body(const struct stow_peer *peer, struct body *b,
		     struct error *err)
{
	char curl_err[CURL_ERROR_SIZE] = "", ctype[160], peer_txt[300];
	struct curl_slist *hdrs = NULL, *l;
	struct answer a = { NULL, 0, 0, answer_max(b->nparts), false };
	long http = 0;
	CURLcode rc;
	CURL *h;
	int ret;

	peer_name(peer->url, peer_txt, sizeof(peer_txt));
	if ((h = peer_handle(peer, peer->url, &hdrs, curl_err, err)) == NULL) {
		curl_slist_free_all(hdrs);
		return -1;
	}
	snprintf(ctype, sizeof(ctype), "Content-Type: multipart/related; "
		 "type=\"application/dicom\"; boundary=%s", b->boundary);
	if ((l = curl_slist_append(hdrs, ctype)) != NULL)
		hdrs = l;
	if ((l = curl_slist_append(hdrs, "Accept: application/dicom+json"))
	    != NULL)
		hdrs = l;
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, body_length(b));
	curl_easy_setopt(h, CURLOPT_READFUNCTION, body_read);
	curl_easy_setopt(h, CURLOPT_READDATA, b);
	curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, body_seek);
	curl_easy_setopt(h, CURLOPT_SEEKDATA, b);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, answer_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &a);
	if (body_enter(b) == -1) {
		rest_of_batch(b, DELIVERY_RETRY, 0, "not sent");
		ret = error_set(err, ERROR_TRANSIENT, b->failed_errno, "STOW-RS: "
				"a file changed before sending");
		goto out;
	}
	rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		ret = curl_failure(b, rc, curl_err, peer_txt, &a, err);
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &http);
	ret = map_status(b, http, peer_txt, apply_answer(b, &a), err);
out:
	curl_easy_cleanup(h);
	curl_slist_free_all(hdrs);
	free(a.buf);
	return ret;
}

int stow_send(const struct stow_peer *peer, struct delivery_item *items,
	      size_t n, struct error *err)
{
	struct body b;
	int ret;

	memset(&b, 0, sizeof(b));
	b.fd = -1;
	if (peer == NULL || peer->url == NULL)
		return error_set(err, ERROR_SETUP, 0, "STOW-RS: no stow_url");
	if (body_plan(&b, items, n, err) == -1) {
		body_release(&b);
		return -1;
	}
	ret = 0;
	if (b.nparts > 0) {
		body_boundary(&b);
		ret = send_body(peer, &b, err);
	}
	body_release(&b);
	return ret;
}

/* ---- stow_probe ---- */

static size_t discard(char *data, size_t size, size_t nmemb, void *arg)
{
	size_t *total = arg;

	(void)data;
	*total += size * nmemb;
	return *total > STOW_ANSWER_MAX ? 0 : size * nmemb;
}

/* One request with method (NULL: GET) on url; the HTTP status, or -1. */
static long probe_once(const struct stow_peer *peer, const char *url,
		       const char *method, const char *peer_txt,
		       struct error *err)
{
	char curl_err[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdrs = NULL, *l;
	size_t total = 0;
	long http = -1;
	CURLcode rc;
	CURL *h;

	if ((h = peer_handle(peer, url, &hdrs, curl_err, err)) == NULL) {
		curl_slist_free_all(hdrs);
		return -1;
	}
	if ((l = curl_slist_append(hdrs, "Accept: application/dicom+json"))
	    != NULL)
		hdrs = l;
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	if (method != NULL) {
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	}
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &total);
	rc = curl_easy_perform(h);
	if (rc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &http);
	else
		error_set(err, ERROR_TRANSIENT, 0, "STOW-RS probe of %s: %s",
			  peer_txt, curl_err[0] ? curl_err :
			  curl_easy_strerror(rc));
	curl_easy_cleanup(h);
	curl_slist_free_all(hdrs);
	return http;
}

/*
 * OPTIONS on the URL, as the issue asks. Orthanc's DICOMweb plugin (1.7)
 * answers OPTIONS with 404, and other servers with 405/501, so those get a
 * second try: a QIDO-RS GET of the same URL with limit=1 (Orthanc: 200 and
 * a JSON array), which proves address, TLS and credentials just as well.
 */
int stow_probe(const struct stow_peer *peer, struct error *err)
{
	char peer_txt[300], *get_url;
	long http;
	size_t len;

	if (peer == NULL || peer->url == NULL)
		return error_set(err, ERROR_SETUP, 0, "STOW-RS: no stow_url");
	peer_name(peer->url, peer_txt, sizeof(peer_txt));
	http = probe_once(peer, peer->url, "OPTIONS", peer_txt, err);
	if (http == 404 || http == 405 || http == 501) {
		len = strlen(peer->url) + 16;
		if ((get_url = malloc(len)) == NULL)
			return error_set(err, ERROR_TRANSIENT, ENOMEM, "probe");
		snprintf(get_url, len, "%s%slimit=1", peer->url,
			 strchr(peer->url, '?') ? "&" : "?");
		http = probe_once(peer, get_url, NULL, peer_txt, err);
		free(get_url);
	}
	if (http == -1)
		return -1;
	if (http >= 200 && http < 300)
		return 0;
	if (http == 401 || http == 403)
		return error_set(err, ERROR_SETUP, 0, "STOW-RS probe of %s: HTTP "
				 "%ld: the peer refused our credentials", peer_txt,
				 http);
	return error_set(err, ERROR_SETUP, 0, "STOW-RS probe of %s: HTTP %ld "
			 "(is stow_url the .../studies endpoint?)", peer_txt,
			 http);
}
