/*
 * watch.c - inotify through libinotifytools, and the debounce table; see
 * watch.h.
 *
 * libinotifytools 3.22 keeps its state in globals (one descriptor, rb-trees
 * of watches, a static event buffer): hence one struct watch at a time, on
 * one thread, and everything here static. Its traps, and our answers:
 *  - no accessor for the descriptor: find it in /proc/self/fd;
 *  - it select()s on that descriptor and aborts when it is >= FD_SETSIZE:
 *    the daemon creates the watch early, and we refuse rather than abort;
 *  - next_event(0) blocks forever and num_events > 1 busy-waits: only
 *    next_events(0, 1) is used, until it returns NULL;
 *  - it buffers up to 4096 events: we drain to NULL before every cleanup,
 *    or the next instance would be handed the old one's events and wds;
 *  - folders created later are not watched, renamed folders keep their old
 *    path, and watches the kernel dropped (rmdir) are never forgotten: we
 *    watch new folders ourselves, move a dropped watch's record out of the
 *    way (a folder made again under its name would look watched), and
 *    rebuild everything (cleanup, initialize, watch root, scan) when a folder
 *    moves, on queue overflow and on watch_rewatch().
 *
 * The table: every known file is an entry in a hash table keyed by its
 * absolute path. Pending entries whose last word was a close (or a move in,
 * a scan, a retry) sit in a binary heap ordered by deadline, so the next
 * ready file and the next timeout are O(1) and a burst costs O(log n) each.
 * Entries waiting for a close after a write are only in the table.
 */
#include "dicomsort/watch.h"
#include "dicomsort/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <linux/openat2.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Declares a `struct watch` of its own; ours is a different type of the
 * same tag, which is fine as long as inotifytools_filename_from_watch()
 * is never called. */
#include <inotifytools/inotifytools.h>

/*
 * IN_CLOSE_WRITE and IN_MOVED_TO make a file pending; IN_MODIFY makes it
 * wait for the next close; IN_ATTRIB (cp -p setting times) pushes the
 * deadline back; IN_CREATE shows symlinks and other files that are never
 * closed; IN_DELETE and IN_MOVED_FROM forget; the *_SELF events tell when
 * the root or a folder goes away. Only writers may delay a file: not
 * IN_OPEN, IN_ACCESS or IN_CLOSE_NOWRITE, or a reader that opens it more
 * often than settle_ms (a virus scanner, a checksum tool) would keep it
 * back forever; and our own reads of files in flight would only be noise.
 */
#define WATCH_EVENTS	(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MODIFY | \
			 IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | \
			 IN_DELETE_SELF | IN_MOVE_SELF | IN_EXCL_UNLINK)

#define MAX_INOTIFY_FDS	64	/* other inotify instances we tolerate */
#define NOT_IN_HEAP	((size_t)-1)
/* How long a file whose close may have been lost, and whose writers we
 * cannot see, must have been left unchanged to count as closed. */
#define LOST_CLOSE_QUIET_MS	60000L

enum entry_state { ENTRY_PENDING, ENTRY_IN_FLIGHT };

struct walk_dir {
	char *path;			/* absolute, without trailing '/' */
	unsigned depth;			/* levels below root */
};

/*
 * While pending, closed and deadline say when the file is ready. While in
 * flight they describe the writes seen meanwhile (dirty): closed whether the
 * last one was a close, deadline when that last event settles.
 */
struct entry {
	struct entry *next;		/* hash chain */
	char *path;
	uint64_t hash;
	uint64_t seq;			/* equal deadlines: first come first */
	int64_t deadline;
	size_t heap_at;			/* index in the heap or NOT_IN_HEAP */
	unsigned attempts;		/* watch_retry() calls since new content */
	unsigned gen;			/* last full scan that saw it */
	unsigned epoch;			/* watch epoch of its last write */
	int64_t since;			/* when it became known (metrics) */
	enum entry_state state;
	bool closed;
	bool dirty;
};

struct watch {
	char *root;			/* without trailing '/' */
	size_t rootlen;
	char **ignore;			/* NULL-terminated, may be empty */
	long settle_ms;
	int fd;				/* -1 while inotify is down */
	long gather_ms;			/* see watch_options.gather_ms */
	int64_t held_until;		/* the queue gathers until then */
	int64_t seen_ms;		/* every event before it is handled */
	bool rebuild;			/* set while draining, done after */
	struct entry **buckets;
	size_t nbuckets, nentries;
	struct entry **heap;
	size_t heaplen, heapcap;
	size_t npending, ninflight;
	uint64_t seq;
	unsigned gen;
	unsigned epoch;			/* rebuilds so far: events lost */
	long max_depth;			/* 0: no bound */
	watch_report_fn *report;
	void *report_ctx;
	bool deferred;
	long test_entry_delay_ms;
	/* The walk (see "the walk" below). */
	struct walk_dir *stack;		/* folders still to list */
	size_t nstack, capstack;
	DIR *dir;			/* the folder being listed, or NULL */
	char dirpath[PATH_MAX];		/* its path, then an entry's */
	size_t dirlen;
	unsigned dirdepth;
	bool walking;			/* a walk is under way */
	bool full;			/* it started at root */
	bool full_again;		/* another full one is due after it */
	bool collect;			/* files found become pending */
	size_t walk_unwatched;		/* folders it could not watch */
	size_t unwatched;		/* as of the last full walk, and since */
	int unwatched_errno;
};

/* libinotifytools has one global instance; so do we. */
static bool watch_exists;

int64_t watch_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Out of memory in the middle of event handling has no useful recovery:
 * a half-updated table would lose files silently. */
static void *xmalloc(size_t size)
{
	void *p = malloc(size);

	if (p == NULL)
		abort();
	return p;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	if (p == NULL)
		abort();
	return p;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		abort();
	return p;
}

/* ---- ignore globs ---- */

static bool glob_ignored(const char *const *globs, const char *name)
{
	/* Our own temp and claim names (fsutil.h), whatever the configured
	 * globs: a claimed source is being moved or deleted, never new. */
	if (strncmp(name, FSUTIL_TMP_PREFIX, strlen(FSUTIL_TMP_PREFIX)) == 0)
		return true;
	for (; globs != NULL && *globs != NULL; globs++)
		if (fnmatch(*globs, name, 0) == 0)
			return true;
	return false;
}

static bool ignored_name(const struct watch *w, const char *name)
{
	return glob_ignored((const char *const *)w->ignore, name);
}

/* A file is ignored when its name or any folder between it and root
 * matches: a writer may fill ".incoming/" and rename it when done. */
bool watch_ignored(const char *const *globs, const char *rel)
{
	char name[NAME_MAX + 1];
	const char *p = rel;

	while (*p != '\0') {
		size_t len = strcspn(p, "/");

		if (len > NAME_MAX)
			return true;
		memcpy(name, p, len);
		name[len] = '\0';
		if (glob_ignored(globs, name))
			return true;
		p += len;
		p += strspn(p, "/");
	}
	return false;
}

static bool ignored_path(const struct watch *w, const char *path)
{
	return watch_ignored((const char *const *)w->ignore,
			     path + w->rootlen + 1);
}

/* ---- the heap of ready-to-be entries ---- */

static bool heap_less(const struct entry *a, const struct entry *b)
{
	if (a->deadline != b->deadline)
		return a->deadline < b->deadline;
	return a->seq < b->seq;
}

static void heap_set(struct watch *w, size_t i, struct entry *e)
{
	w->heap[i] = e;
	e->heap_at = i;
}

static void heap_up(struct watch *w, size_t i)
{
	struct entry *e = w->heap[i];

	while (i > 0 && heap_less(e, w->heap[(i - 1) / 2])) {
		heap_set(w, i, w->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(w, i, e);
}

static void heap_down(struct watch *w, size_t i)
{
	struct entry *e = w->heap[i];

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= w->heaplen)
			break;
		if (c + 1 < w->heaplen && heap_less(w->heap[c + 1], w->heap[c]))
			c++;
		if (!heap_less(w->heap[c], e))
			break;
		heap_set(w, i, w->heap[c]);
		i = c;
	}
	heap_set(w, i, e);
}

static void heap_push(struct watch *w, struct entry *e)
{
	if (w->heaplen == w->heapcap) {
		size_t cap = w->heapcap ? w->heapcap * 2 : 64;
		struct entry **h = realloc(w->heap, cap * sizeof(*h));

		if (h == NULL)
			abort();
		w->heap = h;
		w->heapcap = cap;
	}
	heap_set(w, w->heaplen++, e);
	heap_up(w, e->heap_at);
}

static void heap_remove(struct watch *w, struct entry *e)
{
	size_t i = e->heap_at;
	struct entry *last;

	if (i == NOT_IN_HEAP)
		return;
	e->heap_at = NOT_IN_HEAP;
	last = w->heap[--w->heaplen];
	if (last == e)
		return;
	heap_set(w, i, last);
	heap_up(w, i);
	heap_down(w, last->heap_at);
}

/* ---- the table of known files ---- */

static uint64_t hash_path(const char *s)
{
	uint64_t h = 14695981039346656037ULL;	/* FNV-1a */

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

static struct entry *lookup(const struct watch *w, const char *path)
{
	uint64_t h = hash_path(path);

	for (struct entry *e = w->buckets[h & (w->nbuckets - 1)]; e != NULL;
	     e = e->next)
		if (e->hash == h && strcmp(e->path, path) == 0)
			return e;
	return NULL;
}

static void grow_table(struct watch *w)
{
	size_t n = w->nbuckets * 2;
	struct entry **b = xcalloc(n, sizeof(*b));

	for (size_t i = 0; i < w->nbuckets; i++) {
		struct entry *e, *next;

		for (e = w->buckets[i]; e != NULL; e = next) {
			next = e->next;
			e->next = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(w->buckets);
	w->buckets = b;
	w->nbuckets = n;
}

/* A new pending entry; the caller sets closed and deadline through
 * set_due(). */
static struct entry *insert(struct watch *w, const char *path)
{
	struct entry *e = xcalloc(1, sizeof(*e));
	size_t b;

	if (w->nentries >= w->nbuckets)
		grow_table(w);
	e->path = xstrdup(path);
	e->hash = hash_path(path);
	e->seq = w->seq++;
	e->since = watch_now_ms();
	e->heap_at = NOT_IN_HEAP;
	e->gen = w->gen;
	e->state = ENTRY_PENDING;
	b = e->hash & (w->nbuckets - 1);
	e->next = w->buckets[b];
	w->buckets[b] = e;
	w->nentries++;
	w->npending++;
	return e;
}

static void drop(struct watch *w, struct entry *e)
{
	struct entry **pp = &w->buckets[e->hash & (w->nbuckets - 1)];

	while (*pp != e)
		pp = &(*pp)->next;
	*pp = e->next;
	heap_remove(w, e);
	if (e->state == ENTRY_PENDING)
		w->npending--;
	else
		w->ninflight--;
	w->nentries--;
	free(e->path);
	free(e);
}

/* Keep the heap in step: a pending entry is in it exactly when closed. */
static void set_due(struct watch *w, struct entry *e, bool closed,
		    int64_t deadline)
{
	e->closed = closed;
	e->deadline = deadline;
	if (e->state != ENTRY_PENDING || !closed)
		heap_remove(w, e);
	else if (e->heap_at == NOT_IN_HEAP)
		heap_push(w, e);
	else {
		heap_up(w, e->heap_at);
		heap_down(w, e->heap_at);
	}
}

/* ---- what events do to an entry ---- */

/*
 * New content restarts the count of parse attempts: a file that keeps
 * growing between tries is still arriving, however slowly, and must not run
 * out of attempts into quarantine. In flight, watch_retry() does it.
 */
static void new_content(struct entry *e)
{
	if (e->state == ENTRY_IN_FLIGHT)
		e->dirty = true;
	else
		e->attempts = 0;
}

/*
 * New content arrived. closed: it was closed after writing, moved in, or
 * found, so it is ready after settling; otherwise it was written to and
 * waits for the next close. Returns 1 when the file is new to us.
 */
static int note_content(struct watch *w, const char *path, int64_t now,
			bool closed)
{
	struct entry *e = lookup(w, path);
	int added = 0;

	if (e == NULL) {
		e = insert(w, path);
		added = 1;
	}
	new_content(e);
	e->epoch = w->epoch;
	set_due(w, e, closed, now + w->settle_ms);
	return added;
}

/* Attributes changed: a writer is still at it (cp -p, rsync -t). */
static void note_touched(struct watch *w, const char *path, int64_t now)
{
	struct entry *e = lookup(w, path);

	if (e != NULL && e->state == ENTRY_PENDING)
		set_due(w, e, e->closed, now + w->settle_ms);
}

/* Deleted or moved away. A file in flight stays until watch_done(), and
 * keeps what was written to it meanwhile: the name may be back already
 * (our own claim of it, given back because it changed; a sender's
 * replace), and a forgotten write would let that version go unprocessed. */
static void note_gone(struct watch *w, const char *path)
{
	struct entry *e = lookup(w, path);

	if (e != NULL && e->state != ENTRY_IN_FLIGHT)
		drop(w, e);
}

/* ---- scanning ---- */

static bool is_dot_or_dotdot(const char *name)
{
	return name[0] == '.' && (name[1] == '\0' ||
				  (name[1] == '.' && name[2] == '\0'));
}

/* Symlinks are not directories here: we never descend through them. */
static bool entry_is_dir(int dfd, const struct dirent *de)
{
	struct stat st;

	if (de->d_type != DT_UNKNOWN)
		return de->d_type == DT_DIR;
	if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1)
		return false;
	return S_ISDIR(st.st_mode);
}

/*
 * Whether some process has name open for writing: 1 yes, 0 no, -1 cannot
 * tell. A read lease (fcntl(2) F_SETLEASE) is refused with EAGAIN exactly
 * when the file is open for writing anywhere; it is granted only to the
 * file's owner or with CAP_LEASE, so for a file a modality's user wrote an
 * unprivileged daemon gets EACCES and the answer is -1. The lease is
 * dropped at once; a writer opening it meanwhile waits that long, and its
 * break is signalled with SIGURG (ignored by default), not SIGIO, whose
 * default would end the daemon.
 */
static int writer_holds(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
			O_NOCTTY | O_CLOEXEC);
	int rc = -1;

	if (fd == -1)
		return -1;
	if (fcntl(fd, F_SETSIG, SIGURG) == 0) {
		if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
			fcntl(fd, F_SETLEASE, F_UNLCK);
			rc = 0;
		} else if (errno == EAGAIN) {
			rc = 1;
		}
	}
	close(fd);
	return rc;
}

/*
 * Any non-directory counts, symlinks and FIFOs too: the pipeline rejects
 * them into quarantine, which is better than leaving them unexplained.
 *
 * A file open for writing is never taken by a scan (issue 12: a writer
 * pausing before the pixel data got its header stored and the rest lost).
 * A new file a writer holds open waits for its close like one we saw
 * written. A known entry still waiting for a close keeps waiting while a
 * writer holds it, and while our watch has been up since its last write:
 * the close would have been reported. Only when the close may have been
 * lost (queue overflow, the gap while watches were rebuilt) is it judged
 * by age: quiet for settle_ms by both our events and its mtime when nobody
 * holds it for writing, for LOST_CLOSE_QUIET_MS when we cannot tell, it
 * counts as closed rather than staying forever.
 */
static long scan_file(struct watch *w, int dfd, const char *name,
		      const char *path, int64_t now)
{
	struct entry *e = lookup(w, path);
	struct timespec rt;
	struct stat st;
	int64_t mtime_ms, real_ms;
	long quiet;
	int busy;

	if (e == NULL) {
		e = insert(w, path);
		e->epoch = w->epoch;
		set_due(w, e, writer_holds(dfd, name) != 1,
			now + w->settle_ms);
		return 1;
	}
	e->gen = w->gen;
	if (e->state != ENTRY_PENDING || e->closed || now < e->deadline)
		return 0;
	busy = writer_holds(dfd, name);
	if (busy == 1 || (busy == -1 && e->epoch == w->epoch))
		return 0;
	/* Cannot tell, and the close may be lost: a writer's pause is
	 * rarely this long, a lost close must not keep a file forever. */
	quiet = w->settle_ms > LOST_CLOSE_QUIET_MS ? w->settle_ms :
		LOST_CLOSE_QUIET_MS;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == -1)
		return 0;
	clock_gettime(CLOCK_REALTIME, &rt);
	real_ms = (int64_t)rt.tv_sec * 1000 + rt.tv_nsec / 1000000;
	mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 +
		   st.st_mtim.tv_nsec / 1000000;
	if (real_ms - mtime_ms >= (busy == 0 ? w->settle_ms : quiet))
		set_due(w, e, true, now + w->settle_ms);
	return 0;
}

/*
 * ---- the walk ----
 *
 * One walk at a time goes through the tree, depth first, with an explicit
 * stack of folder paths instead of recursion: whatever the depth it holds
 * one open folder (the one being listed) and briefly one more to open the
 * next. A folder is watched when the walk gets to it, before it is listed,
 * so a file written into it meanwhile is either listed or reported. A full
 * walk starts at root and ends by forgetting what it did not see; a folder
 * that appears later is pushed onto the walk under way (or starts a
 * partial one). The walk advances in slices (watch_scan_step()) so that
 * the daemon's loop answers signals in between; without opts.deferred
 * every call that starts one finishes it.
 */

/* Entries per slice, and the time a slice may take at most. */
#define WALK_SLICE_ENTRIES	1024
#define WALK_SLICE_MS		20

static int watch_dir(struct watch *w, const char *path);

static unsigned depth_of(const struct watch *w, const char *path)
{
	unsigned depth = 0;

	for (const char *p = path + w->rootlen; *p != '\0'; p++)
		if (*p == '/' && p[1] != '/' && p[1] != '\0')
			depth++;
	return depth;
}

static void report(struct watch *w, enum watch_problem what, const char *dir,
		   unsigned depth)
{
	if (w->report != NULL)
		w->report(w->report_ctx, what, dir, depth);
}

static void walk_push(struct watch *w, const char *path, unsigned depth)
{
	if (w->max_depth > 0 && depth > (unsigned long)w->max_depth) {
		report(w, WATCH_TOO_DEEP, path, depth);
		return;
	}
	if (w->nstack == w->capstack) {
		size_t cap = w->capstack ? w->capstack * 2 : 64;
		struct walk_dir *s = realloc(w->stack, cap * sizeof(*s));

		if (s == NULL)
			abort();
		w->stack = s;
		w->capstack = cap;
	}
	w->stack[w->nstack].path = xstrdup(path);
	w->stack[w->nstack].depth = depth;
	w->nstack++;
	w->walking = true;
}

/*
 * Open the folder rel below root without following a symlink anywhere on
 * the way (a sender may swap a folder for a link to elsewhere): openat2()
 * with RESOLVE_BENEATH, or where the kernel or a seccomp filter refuses
 * it, one component at a time, each opened from its parent, which is
 * closed at once - two descriptors at most, whatever the depth.
 */
static int open_below(int rootfd, const char *rel)
{
	struct open_how how = {
		.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
			   RESOLVE_NO_MAGICLINKS,
	};
	char name[NAME_MAX + 1];
	int fd;

	if (*rel == '\0')
		return openat(rootfd, ".", (int)how.flags);
	fd = (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof(how));
	if (fd != -1 || (errno != ENOSYS && errno != EPERM && errno != E2BIG))
		return fd;
	fd = openat(rootfd, ".", (int)how.flags);
	while (fd != -1 && *rel != '\0') {
		size_t len = strcspn(rel, "/");
		int next;

		if (len > NAME_MAX) {
			close(fd);
			errno = ENAMETOOLONG;
			return -1;
		}
		memcpy(name, rel, len);
		name[len] = '\0';
		next = openat(fd, name, (int)how.flags);
		close(fd);
		fd = next;
		rel += len;
		rel += strspn(rel, "/");
	}
	return fd;
}

/* Pop folders until one opens; it is watched first. false: none left. */
static bool walk_open_next(struct watch *w)
{
	while (w->nstack > 0) {
		struct walk_dir top = w->stack[--w->nstack];
		size_t len = strlen(top.path);
		int rootfd, fd = -1;

		if (w->fd != -1)
			watch_dir(w, top.path);	/* root: a lookup, or a retry */
		rootfd = open(w->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (rootfd != -1) {
			fd = open_below(rootfd, top.path + w->rootlen +
					(top.depth > 0 ? 1 : 0));
			close(rootfd);
		}
		if (fd != -1 && (w->dir = fdopendir(fd)) == NULL)
			close(fd);
		if (w->dir != NULL) {
			memcpy(w->dirpath, top.path, len + 1);
			w->dirlen = len;
			w->dirdepth = top.depth;
		}
		free(top.path);
		if (w->dir != NULL)
			return true;	/* else gone meanwhile, or not ours */
	}
	return false;
}

static void walk_close(struct watch *w)
{
	if (w->dir != NULL)
		closedir(w->dir);
	w->dir = NULL;
}

static void walk_clear(struct watch *w)
{
	walk_close(w);
	while (w->nstack > 0)
		free(w->stack[--w->nstack].path);
	w->walking = false;
	w->full = false;
}

/* Entries no full scan has seen and whose file is gone: events lost in
 * an overflow, or paths gone stale when a folder moved. */
static void prune_unseen(struct watch *w)
{
	struct stat st;

	for (size_t i = 0; i < w->nbuckets; i++) {
		struct entry *e = w->buckets[i], *next;

		for (; e != NULL; e = next) {
			next = e->next;
			if (e->state != ENTRY_PENDING || e->gen == w->gen)
				continue;
			if (lstat(e->path, &st) == -1 &&
			    (errno == ENOENT || errno == ENOTDIR))
				drop(w, e);
		}
	}
}

/* A full walk from root; the one under way, if any, is abandoned. */
static void walk_start_full(struct watch *w)
{
	walk_clear(w);
	w->gen++;
	w->full = true;
	w->full_again = false;
	w->walk_unwatched = 0;
	walk_push(w, w->root, 0);
}

static void walk_finished(struct watch *w)
{
	bool full = w->full;

	w->walking = false;
	w->full = false;
	if (full) {
		prune_unseen(w);
		w->unwatched = w->walk_unwatched;
	}
	if (w->full_again)
		walk_start_full(w);
}

/* One entry of the folder being listed. */
static long walk_entry(struct watch *w, struct dirent *de, int64_t now)
{
	size_t nlen = strlen(de->d_name);
	char *path = w->dirpath;
	long added = 0;

	if (w->dirlen + 1 + nlen >= PATH_MAX) {
		if (entry_is_dir(dirfd(w->dir), de))
			report(w, WATCH_TOO_LONG, w->dirpath, w->dirdepth + 1);
		return 0;
	}
	path[w->dirlen] = '/';
	memcpy(path + w->dirlen + 1, de->d_name, nlen + 1);
	if (entry_is_dir(dirfd(w->dir), de))
		walk_push(w, path, w->dirdepth + 1);
	else if (w->collect)
		added = scan_file(w, dirfd(w->dir), de->d_name, path, now);
	path[w->dirlen] = '\0';
	return added;
}

/* Walk up to max_entries entries or max_ms, whichever comes first. */
static long walk_some(struct watch *w, size_t max_entries, int64_t max_ms)
{
	int64_t start = watch_now_ms(), now = start;
	long added = 0;
	size_t n = 0;

	while (w->walking && n < max_entries) {
		struct dirent *de;

		if (w->dir == NULL && !walk_open_next(w)) {
			walk_finished(w);
			continue;
		}
		de = readdir(w->dir);
		if (de == NULL) {
			walk_close(w);
			continue;
		}
		if (is_dot_or_dotdot(de->d_name) || ignored_name(w, de->d_name))
			continue;
		if (w->test_entry_delay_ms > 0) {
			struct timespec ts = { w->test_entry_delay_ms / 1000,
				(w->test_entry_delay_ms % 1000) * 1000000 };

			nanosleep(&ts, NULL);
		}
		added += walk_entry(w, de, now);
		if (++n % 32 == 0) {
			now = watch_now_ms();
			if (max_ms >= 0 && now - start >= max_ms)
				break;
		}
	}
	return added;
}

/* The whole walk under way, to its end. */
static long walk_all(struct watch *w)
{
	long added = 0;

	while (w->walking)
		added += walk_some(w, SIZE_MAX, -1);
	return added;
}

/* A folder that appeared below root: walked (watched, then listed) with
 * the walk under way, or by a partial walk of its own. */
static void walk_new_dir(struct watch *w, const char *path)
{
	walk_push(w, path, depth_of(w, path));
}

void watch_scan_begin(struct watch *w)
{
	if (w->walking && w->full)
		w->full_again = true;
	else
		walk_start_full(w);	/* a partial walk is part of it */
}

long watch_scan_step(struct watch *w, struct error *err)
{
	(void)err;
	return walk_some(w, WALK_SLICE_ENTRIES, WALK_SLICE_MS);
}

bool watch_scanning(const struct watch *w)
{
	return w->walking;
}

size_t watch_unwatched(const struct watch *w, int *errnum)
{
	if (errnum != NULL)
		*errnum = w->unwatched_errno;
	return w->unwatched;
}

long watch_scan(struct watch *w, struct error *err)
{
	struct stat st;

	if (stat(w->root, &st) == -1 || !S_ISDIR(st.st_mode))
		return error_set(err, ERROR_TRANSIENT, errno ? errno : ENOTDIR,
				 "cannot scan %s", w->root);
	walk_start_full(w);
	return walk_all(w);
}

/* ---- inotify through libinotifytools ---- */

/* The inotify instances open in this process, or -1. */
static int list_inotify_fds(int *fds, size_t max, size_t *n)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *de;

	*n = 0;
	if (dir == NULL)
		return -1;
	while ((de = readdir(dir)) != NULL) {
		char link[64];
		ssize_t len;

		if (de->d_name[0] == '.')
			continue;
		len = readlinkat(dirfd(dir), de->d_name, link, sizeof(link) - 1);
		if (len <= 0)
			continue;
		link[len] = '\0';
		if (strcmp(link, "anon_inode:inotify") != 0)
			continue;
		if (*n == max) {
			closedir(dir);
			errno = EMFILE;
			return -1;
		}
		fds[(*n)++] = atoi(de->d_name);
	}
	closedir(dir);
	return 0;
}

/* The descriptor inotifytools_initialize() just made: it has no accessor,
 * so it is the one inotify instance that was not there before. */
static int find_new_inotify_fd(const int *before, size_t nbefore)
{
	int after[MAX_INOTIFY_FDS];
	size_t nafter;
	int found = -1;

	if (list_inotify_fds(after, MAX_INOTIFY_FDS, &nafter) == -1)
		return -1;
	for (size_t i = 0; i < nafter; i++) {
		bool old = false;

		for (size_t j = 0; j < nbefore && !old; j++)
			old = after[i] == before[j];
		if (old)
			continue;
		if (found != -1) {
			errno = EEXIST;	/* someone else made one meanwhile */
			return -1;
		}
		found = after[i];
	}
	if (found == -1)
		errno = ENOENT;
	return found;
}

static int inotify_up(struct watch *w, enum error_kind kind,
		      struct error *err)
{
	int before[MAX_INOTIFY_FDS];
	size_t nbefore;
	int fd, flags;

	if (list_inotify_fds(before, MAX_INOTIFY_FDS, &nbefore) == -1)
		return error_set(err, kind, errno, "cannot list /proc/self/fd");
	if (!inotifytools_initialize())
		return error_set(err, kind, inotifytools_error(),
				 "cannot initialize inotify");
	fd = find_new_inotify_fd(before, nbefore);
	if (fd == -1) {
		error_set(err, kind, errno, "cannot find the inotify descriptor");
		inotifytools_cleanup();
		return -1;
	}
	if (fd >= FD_SETSIZE) {
		/* libinotifytools would abort in FD_SET() on the first read. */
		inotifytools_cleanup();
		return error_set(err, kind, 0, "inotify descriptor %d is beyond "
				 "FD_SETSIZE (%d): too many files open", fd,
				 FD_SETSIZE);
	}
	flags = fcntl(fd, F_GETFL);
	if (flags == -1 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) == -1 ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC) == -1) {
		error_set(err, kind, errno, "cannot set up the inotify descriptor");
		inotifytools_cleanup();
		return -1;
	}
	w->fd = fd;
	return 0;
}

/*
 * Read and throw away whatever the library still buffers, so that cleanup
 * leaves nothing behind for the next instance to misread.
 */
static void drain_discard(void)
{
	while (inotifytools_next_events(0, 1) != NULL ||
	       inotifytools_error() == EINTR)
		;
}

static void inotify_down(struct watch *w)
{
	if (w->fd == -1)
		return;
	drain_discard();
	inotifytools_cleanup();
	w->fd = -1;
}

/*
 * Watch one folder, not what is below it: the walk gets to those (the
 * library's watch_recursively() holds a descriptor per level, and gave up
 * at about a thousand levels with EMFILE). 0, or -1 with errno. A folder
 * that exists but cannot be watched - beyond the inotify watch limit
 * (ENOSPC) or otherwise - is counted: scans are then its only way in.
 */
static int watch_dir(struct watch *w, const char *path)
{
	char dir[PATH_MAX];
	size_t len = strlen(path);
	int e;

	if (len + 1 >= sizeof(dir)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	/* The library keys folders with a slash; adding a watch twice makes
	 * it leak the first record. */
	memcpy(dir, path, len);
	memcpy(dir + len, "/", 2);
	if (inotifytools_wd_from_filename(dir) != -1)
		return 0;
	if (inotifytools_watch_file(dir, WATCH_EVENTS | IN_ONLYDIR |
				    IN_DONT_FOLLOW))
		return 0;
	e = inotifytools_error();
	if (e == 0)
		e = EIO;	/* it failed without saying why */
	if (e != ENOENT && e != ENOTDIR) {
		if (w->walking && w->full)
			w->walk_unwatched++;
		else
			w->unwatched++;
		w->unwatched_errno = e;
	}
	errno = e;
	return -1;
}

/* Everything again: forgets stale paths and kernel-dropped watches; the
 * caller walks the tree to watch the rest. On failure inotify may be down
 * (fd -1). Root beyond the watch limit is no failure: scans take over. */
static int rebuild(struct watch *w, enum error_kind kind, struct error *err)
{
	w->epoch++;		/* events in between are lost */
	w->rebuild = false;
	inotify_down(w);
	w->unwatched = 0;
	if (inotify_up(w, kind, err) == -1)
		return -1;
	if (watch_dir(w, w->root) == -1 && errno != ENOSPC)
		return error_set(err, kind, errno, "cannot watch %s", w->root);
	return 0;
}

int watch_rebuild(struct watch *w, struct error *err)
{
	int rc = rebuild(w, ERROR_TRANSIENT, err);

	/* Walk even when watching failed: the periodic retry then keeps
	 * files moving, if late. A full walk under way goes on and another
	 * follows it (it re-watches what this one passed): restarting it at
	 * every rebuild would never let a long one end. */
	if (w->walking && w->full)
		w->full_again = true;
	else
		walk_start_full(w);
	return rc;
}

long watch_rewatch(struct watch *w, struct error *err)
{
	struct error scan_err = ERROR_INIT;
	int rc = rebuild(w, ERROR_TRANSIENT, err);
	long added;

	added = watch_scan(w, rc == -1 ? &scan_err : err);
	return rc == -1 ? -1 : added;
}

/* ---- events ---- */

static bool is_root_dir(const struct watch *w, const char *dir)
{
	return strncmp(dir, w->root, w->rootlen) == 0 &&
	       strcmp(dir + w->rootlen, "/") == 0;
}

/* A folder appeared: the walk watches it, then lists it for what arrived
 * before the watch did. */
static void dir_appeared(struct watch *w, const char *path)
{
	if (!ignored_path(w, path))
		walk_new_dir(w, path);
}

static long file_event(struct watch *w, uint32_t mask, const char *path,
		       int64_t now)
{
	struct stat st;

	if (ignored_path(w, path))
		return 0;
	if (mask & (IN_CLOSE_WRITE | IN_MOVED_TO))
		return note_content(w, path, now, true);
	if (mask & IN_MODIFY)
		return note_content(w, path, now, false);
	if (mask & (IN_DELETE | IN_MOVED_FROM))
		note_gone(w, path);
	else if (mask & IN_ATTRIB)
		note_touched(w, path, now);
	else if ((mask & IN_CREATE) && lstat(path, &st) == 0 &&
		 !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
		return note_content(w, path, now, true);	/* never closed */
	return 0;
}

/*
 * The kernel dropped watch wd (its folder was removed, or our rmdir of an
 * emptied folder). libinotifytools keeps the record under the folder's
 * path, so a folder made again under that name would look watched and
 * never be: move the record (and any under it, all as dead) to a name no
 * path can have. It stays in memory until the next rebuild, as the library
 * cannot forget a watch the kernel already removed.
 */
static void forget_dead_watch(int wd)
{
	const char *dir = inotifytools_filename_from_wd(wd);
	char old[PATH_MAX], gone[64];

	if (dir == NULL || dir[0] != '/' || strlen(dir) >= sizeof(old))
		return;
	memcpy(old, dir, strlen(dir) + 1);	/* the library frees dir */
	snprintf(gone, sizeof(gone), "(gone %d)/", wd);
	inotifytools_replace_filename(old, gone);
}

/*
 * One event. Regular files created are left to their IN_MODIFY and
 * IN_CLOSE_WRITE (a hard link has neither: the periodic scan finds it).
 * Our own rmdir gives IN_DELETE_SELF and IN_IGNORED on the folder: nothing
 * to do. A folder moving anywhere makes every path below it stale.
 */
static long handle_event(struct watch *w, const struct inotify_event *ev,
			 int64_t now)
{
	char path[PATH_MAX];
	const char *dir;

	if (ev->mask & (IN_Q_OVERFLOW | IN_UNMOUNT)) {
		w->rebuild = true;
		return 0;
	}
	if (ev->mask & IN_IGNORED) {
		forget_dead_watch(ev->wd);
		return 0;
	}
	dir = inotifytools_filename_from_wd(ev->wd);
	if (dir == NULL || dir[0] == '\0')
		return 0;	/* a watch the library no longer knows */
	if (ev->len == 0 || ev->name[0] == '\0') {
		if ((ev->mask & IN_MOVE_SELF) ||
		    ((ev->mask & IN_DELETE_SELF) && is_root_dir(w, dir)))
			w->rebuild = true;
		return 0;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s%s", dir, ev->name) >=
	    sizeof(path) || strncmp(path, w->root, w->rootlen) != 0 ||
	    path[w->rootlen] != '/')
		return 0;
	if (!(ev->mask & IN_ISDIR))
		return file_event(w, ev->mask, path, now);
	if (ev->mask & IN_MOVED_FROM)
		w->rebuild = true;
	else if (ev->mask & (IN_CREATE | IN_MOVED_TO))
		dir_appeared(w, path);
	return 0;
}

/*
 * Drains to NULL, however long that takes: events the library buffered
 * would not wake poll() again. Flooding it means writing files faster than
 * a hash lookup per event, which the kernel queue limit catches first.
 */
int watch_handle_events(struct watch *w, struct error *err)
{
	struct error ev_err = ERROR_INIT;
	int64_t now = watch_now_ms();
	struct inotify_event *ev;
	long added = 0;
	int rc;

	if (w->fd == -1)
		return 0;
	for (;;) {
		int e;

		ev = inotifytools_next_events(0, 1);
		if (ev != NULL) {
			if (!w->rebuild)
				added += handle_event(w, ev, now);
			continue;
		}
		e = inotifytools_error();
		if (e == EINTR)
			continue;
		if (e != 0 && e != EAGAIN) {
			error_set(&ev_err, ERROR_TRANSIENT, e, "reading inotify");
			w->rebuild = true;
		}
		break;
	}
	/* Everything queued before now is handled; let what comes next
	 * gather for a while (see watch_poll_fd()). */
	w->seen_ms = now;
	w->held_until = w->gather_ms > 0 ? now + w->gather_ms : 0;
	rc = 0;
	if (w->rebuild) {
		rc = watch_rebuild(w, err);
	} else if (ev_err.kind != ERROR_NONE) {
		if (err != NULL)
			*err = ev_err;
		rc = -1;
	}
	if (!w->deferred)
		added += walk_all(w);
	if (rc == -1)
		return -1;
	return added > INT_MAX ? INT_MAX : (int)added;
}

/* ---- life cycle ---- */

static char **copy_globs(const char *const *globs)
{
	size_t n = 0;
	char **copy;

	while (globs != NULL && globs[n] != NULL)
		n++;
	copy = xcalloc(n + 1, sizeof(*copy));
	for (size_t i = 0; i < n; i++)
		copy[i] = xstrdup(globs[i]);
	return copy;
}

int watch_new(struct watch **out, const struct watch_options *opts,
	      struct error *err)
{
	struct watch *w;
	size_t len;

	*out = NULL;
	if (watch_exists)
		return error_set(err, ERROR_SETUP, 0, "only one watch at a time: "
				 "libinotifytools has global state");
	if (opts->root == NULL || opts->root[0] != '/')
		return error_set(err, ERROR_SETUP, 0, "input folder must be an "
				 "absolute path");
	len = strlen(opts->root);
	while (len > 0 && opts->root[len - 1] == '/')
		len--;
	if (len == 0)
		return error_set(err, ERROR_SETUP, 0, "input folder cannot be /");
	if (len >= PATH_MAX - 1)
		return error_set(err, ERROR_SETUP, ENAMETOOLONG, "%s", opts->root);
	w = xcalloc(1, sizeof(*w));
	w->root = xmalloc(len + 1);
	memcpy(w->root, opts->root, len);
	w->root[len] = '\0';
	w->rootlen = len;
	w->ignore = copy_globs(opts->ignore);
	w->settle_ms = opts->settle_ms > 0 ? opts->settle_ms : 0;
	w->fd = -1;
	w->gather_ms = opts->gather_ms > 0 ? opts->gather_ms : 0;
	w->nbuckets = 256;
	w->buckets = xcalloc(w->nbuckets, sizeof(*w->buckets));
	w->max_depth = opts->max_depth > 0 ? opts->max_depth : 0;
	w->report = opts->report;
	w->report_ctx = opts->report_ctx;
	w->deferred = opts->deferred;
	w->test_entry_delay_ms = opts->test_entry_delay_ms;
	w->collect = true;
	watch_exists = true;
	if (rebuild(w, ERROR_SETUP, err) == -1) {
		watch_free(w);
		return -1;
	}
	if (!w->deferred) {
		/* Watch every folder now; the backlog is watch_scan()'s. */
		walk_start_full(w);
		w->collect = false;
		walk_all(w);
		w->collect = true;
	}
	*out = w;
	return 0;
}

void watch_free(struct watch *w)
{
	if (w == NULL)
		return;
	walk_clear(w);
	free(w->stack);
	inotify_down(w);
	for (size_t i = 0; i < w->nbuckets; i++) {
		struct entry *e, *next;

		for (e = w->buckets[i]; e != NULL; e = next) {
			next = e->next;
			free(e->path);
			free(e);
		}
	}
	for (char **g = w->ignore; *g != NULL; g++)
		free(*g);
	free(w->ignore);
	free(w->buckets);
	free(w->heap);
	free(w->root);
	free(w);
	watch_exists = false;
}

int watch_fd(const struct watch *w)
{
	return w->fd;
}

/*
 * Gathering. libinotifytools reads the queue in one read(2), but a loop
 * that polls the descriptor wakes for each event of a burst: poll, the
 * library's select, FIONREAD, read and a last select per event, seven
 * calls a file. So after each read the descriptor is left out of the poll
 * set for gather_ms and the queue fills meanwhile; the loop comes back
 * when that ends (watch_poll_timeout_ms()). An event waits at most
 * gather_ms longer: a fraction of settle_ms, which every file waits anyway.
 * No file is handed out whose deadline is later than the last look at the
 * queue (a read, or a poll that found it empty): a write in the last
 * gather_ms before its deadline still pushes it back, as it would without
 * gathering.
 */
static bool gathering(const struct watch *w)
{
	return w->gather_ms > 0 && w->fd != -1;
}

int watch_poll_fd(const struct watch *w, int64_t now)
{
	if (gathering(w) && now < w->held_until)
		return -1;
	return w->fd;
}

/* The first pending deadline, or -1. */
static int64_t first_deadline(const struct watch *w)
{
	return w->heaplen == 0 ? -1 : w->heap[0]->deadline;
}

int watch_poll_timeout_ms(const struct watch *w, int64_t now)
{
	int64_t first = first_deadline(w);

	if (!gathering(w))
		return -1;
	if (now < w->held_until) {
		int64_t left = w->held_until - now;

		return left > INT_MAX ? INT_MAX : (int)left;
	}
	/* A file is due that waits for a look at the queue. */
	if (first >= 0 && first <= now && first > w->seen_ms)
		return 0;
	return -1;
}

void watch_polled(struct watch *w, int64_t before, bool readable)
{
	if (!readable && before > w->seen_ms)
		w->seen_ms = before;
}

/* The latest deadline a file may have to be handed out now. */
static int64_t take_until(const struct watch *w, int64_t now)
{
	return gathering(w) && w->seen_ms < now ? w->seen_ms : now;
}

/* ---- handing files out ---- */

int64_t watch_next_ready_ms(const struct watch *w)
{
	int64_t now = watch_now_ms();
	int64_t left;

	if (w->heaplen == 0)
		return -1;
	left = w->heap[0]->deadline - now;
	/* Due, and waiting for the queue: the gathering ends first. */
	if (left <= 0 && w->heap[0]->deadline > take_until(w, now) &&
	    now < w->held_until)
		left = w->held_until - now;
	return left > 0 ? left : 0;
}

size_t watch_take_ready(struct watch *w, char **paths, size_t max)
{
	int64_t until = take_until(w, watch_now_ms());
	size_t n = 0;

	while (n < max && w->heaplen > 0 && w->heap[0]->deadline <= until) {
		struct entry *e = w->heap[0];

		heap_remove(w, e);
		e->state = ENTRY_IN_FLIGHT;
		e->dirty = false;
		w->npending--;
		w->ninflight++;
		paths[n++] = xstrdup(e->path);
	}
	return n;
}

/* Back to pending, for what was written while it was in flight. */
static void land(struct watch *w, struct entry *e, bool closed,
		 int64_t deadline)
{
	if (e->state == ENTRY_IN_FLIGHT) {
		e->state = ENTRY_PENDING;
		w->ninflight--;
		w->npending++;
	}
	e->dirty = false;
	set_due(w, e, closed, deadline);
}

void watch_done(struct watch *w, const char *path)
{
	struct entry *e = lookup(w, path);

	struct stat st;

	if (e == NULL || e->state != ENTRY_IN_FLIGHT)
		return;
	/* Written meanwhile, but nothing under the name now: nothing to do. */
	if (!e->dirty || (lstat(e->path, &st) == -1 && errno == ENOENT)) {
		drop(w, e);
		return;
	}
	e->attempts = 0;	/* new content, a fresh start */
	land(w, e, e->closed, e->deadline);
}

void watch_retry(struct watch *w, const char *path, long delay_ms)
{
	struct entry *e = lookup(w, path);
	int64_t at = watch_now_ms() + (delay_ms > 0 ? delay_ms : 0);

	if (e == NULL)
		e = insert(w, path);
	if (e->state == ENTRY_IN_FLIGHT && e->dirty) {
		/* A writer is back: its last event decides, but not sooner
		 * than asked; the try saw old content and does not count. */
		e->attempts = 0;
		land(w, e, e->closed, e->deadline > at ? e->deadline : at);
		return;
	}
	e->attempts++;
	land(w, e, true, at);
}

unsigned watch_attempts(const struct watch *w, const char *path)
{
	const struct entry *e = lookup(w, path);

	return e != NULL ? e->attempts : 0;
}

size_t watch_pending_count(const struct watch *w)
{
	return w->npending;
}

size_t watch_in_flight_count(const struct watch *w)
{
	return w->ninflight;
}

/* A walk of the table: called every few seconds for the metrics, not
 * per event, so it needs no index of its own. */
int64_t watch_oldest_ms(const struct watch *w)
{
	int64_t oldest = -1;

	for (size_t b = 0; b < w->nbuckets; b++)
		for (const struct entry *e = w->buckets[b]; e; e = e->next)
			if (oldest < 0 || e->since < oldest)
				oldest = e->since;
	return oldest < 0 ? -1 : watch_now_ms() - oldest;
}

/* ---- removing emptied folders ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* All known paths, sorted: the ones below a folder are then one binary
 * search away, which keeps a cleanup O((folders + files) log files). */
static char **sorted_paths(const struct watch *w)
{
	char **paths = xmalloc((w->nentries + 1) * sizeof(*paths));
	size_t n = 0;

	for (size_t i = 0; i < w->nbuckets; i++)
		for (struct entry *e = w->buckets[i]; e != NULL; e = e->next)
			paths[n++] = e->path;
	qsort(paths, n, sizeof(*paths), cmp_str);
	return paths;
}

static bool known_below(const struct watch *w, char **paths, char *dir,
			size_t len)
{
	size_t lo = 0, hi = w->nentries;
	bool below;

	dir[len] = '/';		/* within PATH_MAX: dir held a name more */
	dir[len + 1] = '\0';
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(paths[mid], dir) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	below = lo < w->nentries && strncmp(paths[lo], dir, len + 1) == 0;
	dir[len] = '\0';
	return below;
}

/*
 * Depth first, so that a tree of empty folders goes in one call. Age is
 * the folder's mtime before we removed anything below it (our own rmdir
 * would make every parent young). Folders with ignored names are left
 * alone: they may be a writer's staging folder that must exist. dfd is
 * consumed. This recursion holds a descriptor per level: it goes no
 * deeper than PRUNE_MAX_DEPTH (nor max_depth), so a deep tree costs it
 * at most that many, and empty folders deeper down stay.
 */
#define PRUNE_MAX_DEPTH	64

static size_t prune_dirs(const struct watch *w, int dfd, char *path,
			 size_t len, time_t cutoff, char **paths,
			 unsigned depth)
{
	DIR *dir = fdopendir(dfd);
	struct dirent *de;
	size_t removed = 0;

	if (dir == NULL) {
		close(dfd);
		return 0;
	}
	while ((de = readdir(dir)) != NULL) {
		size_t nlen = strlen(de->d_name);
		struct stat st;
		bool old;
		int fd;

		if (is_dot_or_dotdot(de->d_name) ||
		    ignored_name(w, de->d_name) || len + 2 + nlen >= PATH_MAX ||
		    !entry_is_dir(dirfd(dir), de))
			continue;
		fd = openat(dirfd(dir), de->d_name, O_RDONLY | O_DIRECTORY |
			    O_NOFOLLOW | O_CLOEXEC);
		if (fd == -1)
			continue;
		if (fstat(fd, &st) == -1) {
			close(fd);
			continue;
		}
		old = st.st_mtime <= cutoff;
		path[len] = '/';
		memcpy(path + len + 1, de->d_name, nlen + 1);
		if (depth < PRUNE_MAX_DEPTH &&
		    (w->max_depth == 0 || depth < (unsigned long)w->max_depth))
			removed += prune_dirs(w, fd, path, len + 1 + nlen,
					      cutoff, paths, depth + 1);
		else
			close(fd);
		/* ENOTEMPTY just means it is in use. */
		if (old && !known_below(w, paths, path, len + 1 + nlen) &&
		    unlinkat(dirfd(dir), de->d_name, AT_REMOVEDIR) == 0)
			removed++;
		path[len] = '\0';
	}
	closedir(dir);
	return removed;
}

size_t watch_remove_empty_dirs(struct watch *w, long min_age_s)
{
	char path[PATH_MAX];
	char **paths;
	size_t removed;
	int fd;

	memcpy(path, w->root, w->rootlen + 1);
	fd = open(w->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return 0;
	paths = sorted_paths(w);
	removed = prune_dirs(w, fd, path, w->rootlen, time(NULL) - min_age_s,
			     paths, 1);
	free(paths);
	return removed;
}
