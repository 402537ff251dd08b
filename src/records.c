/* records.c - `stored` records that survive SIGKILL; see records.h. */
#include "dicomsort/records.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "dicomsort/fsutil.h"

#define MARKER_MAX 16384
#define MARKER_SUFFIX ".pending"
#define LOG_SUFFIX ".log"
/* A log is started afresh past this size once its notes are all done;
 * the old one goes when its last note is. */
#define LOG_ROTATE_BYTES (1024 * 1024)

/* The fields of a marker, in this order, NUL-terminated each: values
 * are file names and DICOM-derived text, which may hold any byte but NUL. */
enum field {
	F_INO, F_SIZE, F_MTIME, F_EVENT, F_SOURCE, F_DEST, F_SOP, F_PROFILE,
	F_TABLE, F_SHA256, F_OWNER, F_COUNT
};

/*
 * Markers are entries of an append-only log per process (a file of
 * markers made and removed per output cost two inode allocations per
 * file, the daemon's largest cost after the output itself): "N<seq>\0"
 * and the fields notes one, "D<seq>\0" says it is done. One write(2)
 * each, O_APPEND, under the lock: entries never interleave, and a kill
 * cuts at most the last one. A log whose notes are all done is removed.
 */
struct segment {
	struct segment *next;
	unsigned id;
	int fd;
	off_t size;
	size_t open;			/* notes not yet done */
	char name[64];			/* <pid>-<id>.log */
};

/* Paths, not descriptors: the output folder may be read-only at start,
 * or removed and made again while we run (the pipeline re-creates it);
 * a log whose file was removed is left for a new one. */
struct records {
	char *output;
	char *state;		/* <output>/.dicomsortd-state/pending */
	pthread_mutex_t lock;
	struct segment *segs;	/* newest first: segs is written to */
	unsigned next_id;
	unsigned long next_seq;
};

int records_open(struct records **out, const char *output_dir,
		 struct error *err)
{
	struct records *r = calloc(1, sizeof(*r));

	*out = NULL;
	if (r == NULL || (r->output = strdup(output_dir)) == NULL ||
	    asprintf(&r->state, "%s/" RECORDS_STATE_DIR "/pending",
		     output_dir) == -1) {
		if (r != NULL)
			free(r->output);
		free(r);
		return error_set(err, ERROR_SETUP, ENOMEM, "out of memory");
	}
	pthread_mutex_init(&r->lock, NULL);
	*out = r;
	return 0;
}

/* Its file goes with it when nothing in it is owed any more. */
static void drop_segment(struct records *r, struct segment *seg)
{
	char path[PATH_MAX];

	if (seg->open == 0) {
		snprintf(path, sizeof(path), "%s/%s", r->state, seg->name);
		unlink(path);
	}
	if (seg->fd != -1)
		close(seg->fd);
	free(seg);
}

void records_free(struct records *r)
{
	char top[PATH_MAX];

	if (r == NULL)
		return;
	while (r->segs != NULL) {
		struct segment *next = r->segs->next;

		drop_segment(r, r->segs);
		r->segs = next;
	}
	/* Empty at a clean stop: the folders go (fine if not). */
	rmdir(r->state);
	snprintf(top, sizeof(top), "%s/" RECORDS_STATE_DIR, r->output);
	rmdir(top);
	pthread_mutex_destroy(&r->lock);
	free(r->state);
	free(r->output);
	free(r);
}

/* Below the output folder only what is missing is made: under
 * ProtectSystem=strict even a mkdir of an existing /srv is a write. */
static int open_state(struct records *r, bool create, struct error *err)
{
	int fd = open(r->state, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int outfd;

	if (fd != -1 || errno != ENOENT || !create)
		return fd;
	outfd = fsutil_open_dir(r->output, true, err);
	if (outfd == -1)
		return -1;
	fd = fsutil_mkdirs_at(outfd, RECORDS_STATE_DIR "/pending", err);
	close(outfd);
	return fd;
}

static size_t put(char *buf, size_t used, const char *val)
{
	size_t len = val ? strlen(val) : 0;

	if (used + len + 1 > MARKER_MAX)
		len = used < MARKER_MAX ? MARKER_MAX - used - 1 : 0;
	if (used >= MARKER_MAX)
		return used;
	memcpy(buf + used, val ? val : "", len);
	buf[used + len] = '\0';
	return used + len + 1;
}

static struct segment *find_segment(struct records *r, unsigned id)
{
	struct segment *seg = r->segs;

	while (seg != NULL && seg->id != id)
		seg = seg->next;
	return seg;
}

/* The log to append to: the newest, unless its file is gone (the output
 * folder was removed) or it is long and a fresh one can take over. */
static struct segment *current_segment(struct records *r, struct error *err)
{
	struct segment *seg = r->segs;
	struct stat st;
	int dirfd;

	if (seg != NULL && seg->fd != -1 && fstat(seg->fd, &st) == 0 &&
	    st.st_nlink > 0 && seg->size < LOG_ROTATE_BYTES)
		return seg;
	seg = calloc(1, sizeof(*seg));
	if (seg == NULL) {
		error_set(err, ERROR_TRANSIENT, ENOMEM, "pending record");
		return NULL;
	}
	dirfd = open_state(r, true, err);
	do {
		seg->id = r->next_id++;
		snprintf(seg->name, sizeof(seg->name), "%ld-%u" LOG_SUFFIX,
			 (long)getpid(), seg->id);
		seg->fd = dirfd == -1 ? -1 :
			  openat(dirfd, seg->name, O_WRONLY | O_APPEND | O_CREAT |
				 O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	} while (seg->fd == -1 && dirfd != -1 && errno == EEXIST);
	if (seg->fd == -1) {
		int e = errno;

		free(seg);
		if (dirfd != -1)
			close(dirfd);
		if (err->kind == ERROR_NONE)
			error_set(err, error_kind_for_output_errno(e), e,
				  "cannot write a pending record in %s", r->state);
		return NULL;
	}
	close(dirfd);
	seg->next = r->segs;
	r->segs = seg;
	return seg;
}

static int append(struct records *r, struct segment *seg, const char *buf,
		  size_t len, struct error *err)
{
	ssize_t n = write(seg->fd, buf, len);

	if (n == (ssize_t)len) {
		seg->size += n;
		return 0;
	}
	/* A part written would corrupt what follows: this log is done. */
	if (n > 0)
		seg->size = LOG_ROTATE_BYTES;
	return error_set(err, error_kind_for_output_errno(n == -1 ? errno : ENOSPC),
			 n == -1 ? errno : ENOSPC,
			 "cannot write a pending record in %s", r->state);
}

/*
 * Numbers of a note and its marker, one file each: decimal by hand, as
 * snprintf("%llu"/"%lld") writes them, without its set-up per call
 * (PROFILE §17). Each writes at buf and returns the length, NUL-ended;
 * buf holds at least 21 bytes.
 */
static size_t dec_u(char *buf, unsigned long long v)
{
	char tmp[24];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	for (size_t i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	buf[n] = '\0';
	return n;
}

static size_t dec_s(char *buf, long long v)
{
	if (v >= 0)
		return dec_u(buf, (unsigned long long)v);
	buf[0] = '-';
	return 1 + dec_u(buf + 1, 0ULL - (unsigned long long)v);
}

/* "%lld.%09ld" of a time stamp (nanoseconds outside a second: printf). */
static void dec_time(char *buf, size_t len, const struct timespec *ts)
{
	size_t n;
	long ns = ts->tv_nsec;

	if (ns < 0 || ns > 999999999 || len < 32) {
		snprintf(buf, len, "%lld.%09ld", (long long)ts->tv_sec, ns);
		return;
	}
	n = dec_s(buf, (long long)ts->tv_sec);
	buf[n++] = '.';
	for (int i = 8; i >= 0; i--, ns /= 10)
		buf[n + (size_t)i] = (char)('0' + ns % 10);
	buf[n + 9] = '\0';
}

/* A marker, "ID:SEQ", cut to len as snprintf() would. */
static void format_marker(char *marker, size_t len, unsigned id,
			  unsigned long seq)
{
	char tmp[48];
	size_t n = dec_u(tmp, id);

	tmp[n++] = ':';
	n += dec_u(tmp + n, seq);
	if (len == 0)
		return;
	if (n > len - 1)
		n = len - 1;
	memcpy(marker, tmp, n);
	marker[n] = '\0';
}

/* The marker's ID and SEQ: two decimal numbers split by a colon (what
 * format_marker() writes; nothing else is ever given). */
static bool parse_marker(const char *marker, unsigned *id, unsigned long *seq)
{
	char *end;
	unsigned long v;

	if (*marker < '0' || *marker > '9')
		return false;
	errno = 0;
	v = strtoul(marker, &end, 10);
	if (errno != 0 || v > UINT_MAX || *end != ':' ||
	    end[1] < '0' || end[1] > '9')
		return false;
	*id = (unsigned)v;
	*seq = strtoul(end + 1, &end, 10);
	return errno == 0;
}

void records_done(struct records *r, char *marker)
{
	char entry[40];
	unsigned id;
	unsigned long seq;
	struct segment *seg;
	struct error ignored = ERROR_INIT;

	if (marker[0] == '\0' || !parse_marker(marker, &id, &seq))
		return;
	marker[0] = '\0';
	pthread_mutex_lock(&r->lock);
	seg = find_segment(r, id);
	if (seg != NULL && seg->fd != -1) {
		size_t n = 1;

		entry[0] = 'D';
		n += dec_u(entry + 1, seq);

		append(r, seg, entry, n + 1, &ignored);
		/* Nothing owed in it: it goes (a burst keeps one log; a
		 * file at a time makes and removes one each, as a marker
		 * file each did). */
		if (--seg->open == 0) {
			struct segment **p = &r->segs;

			while (*p != seg)
				p = &(*p)->next;
			*p = seg->next;
			drop_segment(r, seg);
		}
	}
	pthread_mutex_unlock(&r->lock);
}

int records_note(struct records *r, char *marker, size_t len,
		 const struct audit_record *rec, const struct stat *out_st,
		 struct error *err)
{
	char num[4][32], *buf;
	size_t used = 0;
	struct segment *seg;
	unsigned long seq;
	int rc;

	/* Noted already (another name is tried): that one is not owed. */
	records_done(r, marker);
	buf = malloc(MARKER_MAX);
	if (buf == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "pending record");
	pthread_mutex_lock(&r->lock);
	seq = r->next_seq++;
	num[3][0] = 'N';
	dec_u(num[3] + 1, seq);
	dec_u(num[0], (unsigned long long)out_st->st_ino);
	dec_s(num[1], (long long)out_st->st_size);
	dec_time(num[2], sizeof(num[2]), &out_st->st_mtim);
	used = put(buf, used, num[3]);
	used = put(buf, used, num[0]);
	used = put(buf, used, num[1]);
	used = put(buf, used, num[2]);
	used = put(buf, used, rec->event);
	used = put(buf, used, rec->source);
	used = put(buf, used, rec->dest);
	used = put(buf, used, rec->sop_instance_uid);
	used = put(buf, used, rec->profile);
	used = put(buf, used, rec->table_sha256);
	used = put(buf, used, rec->source_sha256);
	used = put(buf, used, rec->source_owner);
	/* No fsync: the threat is a killed process, and the page cache
	 * outlives it. After a power loss journald's own unsynced tail is
	 * as much at risk as this marker. */
	seg = current_segment(r, err);
	rc = seg == NULL ? -1 : append(r, seg, buf, used, err);
	if (rc == 0) {
		seg->open++;
		format_marker(marker, len, seg->id, seq);
	}
	pthread_mutex_unlock(&r->lock);
	free(buf);
	return rc;
}

/* The F_COUNT fields at buf[0..n); bytes used, or -1 if cut short
 * (killed while it was written: nothing was published after it). */
static long parse_fields(const char *buf, size_t n, const char **f)
{
	size_t at = 0;

	for (int i = 0; i < F_COUNT; i++) {
		const char *end;

		if (at >= n)
			return -1;
		end = memchr(buf + at, '\0', n - at);
		if (end == NULL)
			return -1;
		f[i] = buf + at;
		at = (size_t)(end - buf) + 1;
	}
	return (long)at;
}

/* The whole of a file of the state folder, NUL-terminated; NULL if it
 * cannot be read. */
static char *read_all(int state_fd, const char *name, size_t *len)
{
	int fd = openat(state_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	char *buf = NULL;
	ssize_t n;

	if (fd == -1)
		return NULL;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    (buf = malloc((size_t)st.st_size + 1)) != NULL) {
		n = read(fd, buf, (size_t)st.st_size);
		*len = n > 0 ? (size_t)n : 0;
		buf[*len] = '\0';
	}
	close(fd);
	return buf;
}

static const char *or_null(const char *s)
{
	return s[0] ? s : NULL;
}

/* Send the record of one marker if its output is there as published. */
static int recover_fields(struct records *r, const char **f,
			  void (*owed)(void *, const char *), void *ctx)
{
	char mtime[48];
	struct stat st;
	struct audit_record rec = { .priority = LOG_INFO, .recovered = 1 };

	char dest[PATH_MAX];

	snprintf(dest, sizeof(dest), "%s/%s", r->output, f[F_DEST]);
	if (lstat(dest, &st) == -1)
		return 0;
	snprintf(mtime, sizeof(mtime), "%lld.%09ld",
		 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	if (strtoull(f[F_INO], NULL, 10) != (unsigned long long)st.st_ino ||
	    strtoll(f[F_SIZE], NULL, 10) != (long long)st.st_size ||
	    strcmp(f[F_MTIME], mtime) != 0)
		return 0;	/* not the file we published: none was */
	rec.event = f[F_EVENT];
	rec.source = or_null(f[F_SOURCE]);
	rec.dest = f[F_DEST];
	rec.sop_instance_uid = or_null(f[F_SOP]);
	rec.profile = or_null(f[F_PROFILE]);
	rec.table_sha256 = or_null(f[F_TABLE]);
	rec.source_sha256 = or_null(f[F_SHA256]);
	rec.source_owner = or_null(f[F_OWNER]);
	rec.reason = "record recovered at start: the daemon was killed "
		     "between storing the file and logging it";
	log_audit(&rec);
	if (owed != NULL)
		owed(ctx, f[F_DEST]);
	return 1;
}

/* A marker file of an earlier version: one marker, no sequence. */
static int recover_marker(struct records *r, int state_fd, const char *name,
			  void (*owed)(void *, const char *), void *ctx)
{
	const char *f[F_COUNT];
	size_t len = 0;
	char *buf = read_all(state_fd, name, &len);
	int sent = 0;

	if (buf != NULL && parse_fields(buf, len, f) != -1)
		sent = recover_fields(r, f, owed, ctx);
	free(buf);
	return sent;
}

struct noted {
	unsigned long seq;
	size_t at;		/* its fields in the log */
	bool done;
};

/* A log: each note not followed by its "done" is owed. */
static long recover_log(struct records *r, int state_fd, const char *name,
			void (*owed)(void *, const char *), void *ctx)
{
	size_t len = 0, at = 0, count = 0, cap = 0;
	char *buf = read_all(state_fd, name, &len);
	struct noted *notes = NULL;
	const char *f[F_COUNT];
	long sent = 0;

	while (buf != NULL && at < len) {
		char kind = buf[at], *end = memchr(buf + at, '\0', len - at);
		unsigned long seq = strtoul(buf + at + 1, NULL, 10);
		long used;

		if (end == NULL || (kind != 'N' && kind != 'D'))
			break;
		at = (size_t)(end - buf) + 1;
		if (kind == 'D') {
			for (size_t i = count; i-- > 0;)
				if (notes[i].seq == seq) {
					notes[i].done = true;
					break;
				}
			continue;
		}
		used = parse_fields(buf + at, len - at, f);
		if (used == -1)
			break;
		if (count == cap) {
			struct noted *more = realloc(notes, (cap * 2 + 64) *
						     sizeof(*notes));

			if (more == NULL)
				break;
			notes = more;
			cap = cap * 2 + 64;
		}
		notes[count++] = (struct noted){ seq, at, false };
		at += (size_t)used;
	}
	for (size_t i = 0; i < count; i++)
		if (!notes[i].done &&
		    parse_fields(buf + notes[i].at, len - notes[i].at, f) != -1)
			sent += recover_fields(r, f, owed, ctx);
	free(notes);
	free(buf);
	return sent;
}

static bool has_suffix(const char *name, const char *suffix)
{
	size_t len = strlen(name), slen = strlen(suffix);

	return len > slen && strcmp(name + len - slen, suffix) == 0;
}

long records_recover(struct records *r)
{
	return records_recover_hooked(r, NULL, NULL);
}

long records_recover_hooked(struct records *r,
			    void (*owed)(void *ctx, const char *dest),
			    void *ctx)
{
	int fd = open_state(r, false, NULL);
	long sent = 0;
	DIR *dir;
	struct dirent *de;

	if (fd == -1)
		return 0;	/* none: nothing was left */
	dir = fdopendir(fd);
	if (dir == NULL) {
		close(fd);
		return 0;
	}
	while ((de = readdir(dir)) != NULL) {
		if (has_suffix(de->d_name, MARKER_SUFFIX))
			sent += recover_marker(r, dirfd(dir), de->d_name, owed,
					       ctx);
		else if (has_suffix(de->d_name, LOG_SUFFIX))
			sent += recover_log(r, dirfd(dir), de->d_name, owed, ctx);
		else
			continue;
		unlinkat(dirfd(dir), de->d_name, 0);
	}
	closedir(dir);
	return sent;
}
