/* pipeline.c - one source file in, one result out; see pipeline.h. */
#include "dicomsort/pipeline.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "dicomsort/dicom.h"
#include "dicomsort/fsutil.h"

/* Clash names are constant-time (fsutil_clash_name()): this bounds only
 * the numbers after a clash of content hashes, which takes a SHA-256
 * prefix collision; it keeps a hostile input from making us probe names
 * forever. */
#define MAX_NUMBERED_NAMES 10000
#define MAX_PLACEHOLDERS 64

struct compiled_layout {
	struct layout *layout;
	uint32_t tags[MAX_PLACEHOLDERS];	/* tag of each placeholder */
};

/* Numbers each pipeline, so a thread's cached folder of one is never taken
 * for another made later at the same address. */
static atomic_ulong generations;

struct pipeline {
	struct pipeline_options opts;
	struct compiled_layout dirs;
	struct compiled_layout name;	/* layout NULL: keep source name */
	int output_fd;
	unsigned long generation;	/* keys the per-thread folder cache */
	dev_t output_dev;		/* a source here can be renamed in */
	uid_t euid;			/* ours: whose sources can be renamed */
	gid_t new_gid;			/* a new file's group in the output
					   root (rename_same_group) */
	atomic_bool dirs_deferred;	/* a rename left new folders to the
					   final syncfs (SYNC_DISPOSAL) */
	mode_t file_mode;		/* 0666 less the umask, as open() gives */
	int processed_fd;		/* -1 unless PIPELINE_MOVE_SOURCE */
	pthread_mutex_t table_lock;	/* guards table (the pointer) */
	struct correlation *table;
};

/* What one pipeline_file() call holds; released in one place. */
struct job {
	struct pipeline *pipeline;
	const struct compiled_layout *layout;	/* during expansion */
	int source_fd;
	struct stat source_st;
	/* The private snapshot every output byte comes from (issue 12): the
	 * source read once, hashed as it is read; a small one in memory
	 * (snap_mem), a larger one in an anonymous file on the output's
	 * file system (snap_fd). Neither when the source itself may become
	 * the output (rename_unchanged): then only what deciding needs is
	 * read from it (head_only()), and whatever is read - a value past
	 * the head included - comes before the version check of its claim
	 * (a rename) or of its copy. */
	bool snapshot;
	struct dicom_bytes *snap_bytes;	/* owns snap_mem until parsed */
	unsigned char *snap_mem;
	int snap_fd;
	char snap_name[64];
	char sha256[65];		/* of the snapshot; "" unless hashed */
	bool leased;			/* source_fd holds a read lease */
	/* source_fd was leased before source_st was fstat'ed (a possible
	 * rename candidate, open_source()): its claim skips the look at
	 * the name (fsutil_move's source_leased). */
	bool leased_early;
	bool busy;			/* not finished: see source_busy() */
	struct dicom_file *file;
	bool copy_bytes;		/* output = the source's bytes */
	struct correlation *table;
	char *values[MAX_PLACEHOLDERS];
	int dir_fd;
	bool dir_cached;		/* dir_fd is the thread's last_dir.fd,
					   lent: not closed by the job */
	int tmp_fd;
	char tmp_name[64];
	const struct pipeline_hooks *hooks;	/* NULL: none */
	bool published;			/* the output has its name */
	/* pipeline_file_staged(): a source to be renamed into place stops
	 * before its renames, which pipeline_finish_staged() makes. */
	struct pipeline_staged *stage;
	bool staged;			/* stopped there: not released yet */
	bool foreign_fs;		/* SYNC_GROUP, but the destination
					   folder is on another file system
					   than the output root (a mount
					   inside the tree), which the commit's
					   syncfs does not cover: synced as
					   under SYNC_EACH */
};

static int compile_layout(struct compiled_layout *cl, const char *tmpl,
			  bool single_component, struct error *err)
{
	if (layout_compile(&cl->layout, tmpl, err) == -1)
		return -1;
	if (single_component && layout_component_count(cl->layout) != 1)
		return error_set(err, ERROR_SETUP, 0,
				 "file name template '%s' must not contain '/'", tmpl);
	if (layout_placeholder_count(cl->layout) > MAX_PLACEHOLDERS)
		return error_set(err, ERROR_SETUP, 0,
				 "template '%s' has too many placeholders", tmpl);
	for (size_t i = 0; i < layout_placeholder_count(cl->layout); i++) {
		const char *kw = layout_placeholder(cl->layout, i);

		if (dicom_tag_from_keyword(kw, &cl->tags[i]) == -1)
			return error_set(err, ERROR_SETUP, 0,
					 "template '%s': unknown DICOM keyword '%s'",
					 tmpl, kw);
	}
	return 0;
}

int pipeline_new(struct pipeline **out, const struct pipeline_options *opts,
	       struct error *err)
{
	struct pipeline *in = calloc(1, sizeof(*in));

	if (in == NULL)
		return error_set(err, ERROR_SETUP, errno, "out of memory");
	in->opts = *opts;
	in->generation = atomic_fetch_add(&generations, 1) + 1;
	in->output_fd = -1;
	in->processed_fd = -1;
	pthread_mutex_init(&in->table_lock, NULL);
	/* Temp files are created 0600 and get the mode a plain open() would
	 * have given: the admin's umask (the unit's UMask=0027) decides who
	 * may read patient data. umask() can only be read by setting it, so
	 * this runs before any worker thread creates files. */
	in->file_mode = umask(0);
	umask(in->file_mode);
	in->file_mode = 0666 & ~in->file_mode;
	in->euid = geteuid();
	*out = in;
	if (compile_layout(&in->dirs, opts->dir_template ? opts->dir_template :
			   LAYOUT_DEFAULT_DIRS, false, err) == -1)
		return -1;
	/* A source's own name may carry the patient's name: under basic the
	 * file is named by its (replaced) SOPInstanceUID unless told otherwise. */
	if (opts->name_template == NULL && opts->deid.profile == DEID_BASIC)
		in->opts.name_template = PIPELINE_DEIDENTIFIED_NAME;
	else if (opts->name_template != NULL && opts->name_template[0] == '\0')
		in->opts.name_template = NULL;	/* asked for: keep the name */
	if (in->opts.name_template != NULL &&
	    compile_layout(&in->name, in->opts.name_template, true, err) == -1)
		return -1;
	if (deid_check_options(&opts->deid, err) == -1)
		return -1;
	if (opts->deid.table != NULL)
		in->table = correlation_ref((struct correlation *)opts->deid.table);
	if (opts->dry_run)
		return 0;
	in->output_fd = fsutil_open_dir(opts->output_dir, true, err);
	if (in->output_fd == -1)
		return -1;
	{
		struct stat st;

		if (fstat(in->output_fd, &st) == -1)
			return error_set(err, ERROR_SETUP, errno, "fstat %s",
					 opts->output_dir);
		in->output_dev = st.st_dev;
		in->new_gid = st.st_mode & S_ISGID ? st.st_gid : getegid();
	}
	if (opts->disposal == PIPELINE_MOVE_SOURCE) {
		if (opts->processed_dir == NULL)
			return error_set(err, ERROR_SETUP, 0,
					 "moving sources needs a processed folder");
		in->processed_fd = fsutil_open_dir(opts->processed_dir, true, err);
		if (in->processed_fd == -1)
			return -1;
	}
	return 0;
}

void pipeline_free(struct pipeline *in)
{
	if (in == NULL)
		return;
	layout_free(in->dirs.layout);
	layout_free(in->name.layout);
	if (in->output_fd != -1)
		close(in->output_fd);
	if (in->processed_fd != -1)
		close(in->processed_fd);
	correlation_unref(in->table);
	pthread_mutex_destroy(&in->table_lock);
	free(in);
}

void pipeline_set_table(struct pipeline *in, struct correlation *table)
{
	struct correlation *old;

	if (table != NULL)
		correlation_ref(table);
	pthread_mutex_lock(&in->table_lock);
	old = in->table;
	in->table = table;
	pthread_mutex_unlock(&in->table_lock);
	correlation_unref(old);
}

static struct correlation *current_table(struct pipeline *in)
{
	struct correlation *t;

	pthread_mutex_lock(&in->table_lock);
	t = in->table ? correlation_ref(in->table) : NULL;
	pthread_mutex_unlock(&in->table_lock);
	return t;
}

static void reopen_output_if_removed(struct pipeline *in);

static void job_release(struct job *job)
{
	if (job->tmp_fd != -1) {
		close(job->tmp_fd);
		fsutil_discard_tmp(job->dir_fd, job->tmp_name);
	}
	if (job->dir_fd != -1 && !job->dir_cached)
		close(job->dir_fd);
	if (job->source_fd != -1)
		close(job->source_fd);
	if (job->snap_fd != -1) {
		close(job->snap_fd);
		fsutil_discard_tmp(job->pipeline->output_fd, job->snap_name);
	}
	dicom_bytes_free(job->snap_bytes);
	for (size_t i = 0; i < MAX_PLACEHOLDERS; i++)
		free(job->values[i]);
	dicom_free(job->file);
	correlation_unref(job->table);
}

/* The source is not finished: a writer has it open or wrote it while
 * it was read. Nothing read is used; it is taken again once settled. */
static int source_busy(struct job *job, struct error *err, const char *why)
{
	job->busy = true;
	return error_set(err, ERROR_TRANSIENT, 0, "%s", why);
}

/* ---- step 1: open the source, refusing anything but a regular file ---- */

static int open_source(struct job *job, const char *path, struct error *err)
{
	/* O_NONBLOCK: opening a FIFO must not wait for a writer. */
	job->source_fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (job->source_fd == -1) {
		if (errno == ELOOP)
			return error_set(err, ERROR_INPUT, 0,
					 "is a symlink; symlinks are never followed");
		if (errno == ENOENT)
			return error_set(err, ERROR_TRANSIENT, errno, "cannot open");
		return error_set(err, ERROR_INPUT, errno, "cannot open");
	}
	/* A file dicomsort --move may rename into the output is leased
	 * before its version is taken: its claim then needs no look at the
	 * name first (fsutil.h, source_leased). Not had (another owner, a
	 * file open for writing): the claim takes it later, as before. */
	if (job->pipeline->opts.rename_unchanged &&
	    job->pipeline->opts.disposal == PIPELINE_DELETE_SOURCE &&
	    !job->pipeline->opts.dry_run)
		job->leased_early = fsutil_lease(job->source_fd,
				job->pipeline->opts.sigio_ignored) == 1;
	if (fstat(job->source_fd, &job->source_st) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "fstat");
	if (!S_ISREG(job->source_st.st_mode))
		return error_set(err, ERROR_INPUT, 0, "not a regular file");
	/* Written since it was judged finished: the version opened may be a
	 * writer's first half, and a check after the read compares with it,
	 * so only this catches it where no lease can be had. */
	if (job->hooks != NULL && job->hooks->judged != NULL &&
	    !fsutil_same_version(&job->source_st, job->hooks->judged))
		return source_busy(job, err, "source written after it was "
				   "judged finished");
	if (job->source_st.st_size == 0)
		return error_set(err, ERROR_INPUT, 0, "empty file");
	if (job->pipeline->opts.max_file_size > 0 &&
	    (unsigned long long)job->source_st.st_size >
	    job->pipeline->opts.max_file_size)
		return error_set(err, ERROR_INPUT, 0, "file larger than the limit "
				 "(%lld > %llu bytes)",
				 (long long)job->source_st.st_size,
				 job->pipeline->opts.max_file_size);
	return 0;
}

/* The source is still the version opened: a writer can set mtime back
 * (rsync --inplace -t, cp -p), never ctime. */
static int check_source_version(struct job *job, struct error *err)
{
	struct stat now;

	if (fstat(job->source_fd, &now) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "fstat");
	if (!fsutil_same_version(&now, &job->source_st))
		return source_busy(job, err, "source changed while it was read");
	return 0;
}

/*
 * A read lease on the source for the whole of its read (issue 12 item 1):
 * the kernel refuses it while anyone has the file open for writing, and
 * breaks it when someone opens it for writing meanwhile (signalled with
 * SIGURG, ignored, or with SIGIO where the process ignores it:
 * fsutil_lease(); SIGIO's default would end us). The watch judged the file
 * finished, but a writer may have opened it again since - between that
 * judgement and our open, the version we fstat is already its half-written
 * one, and no ctime check can tell. Granted only to the file's owner or
 * with CAP_LEASE; without it the read goes on unleased (dicomsortd(8)).
 */
static int lease_source(struct job *job, struct error *err)
{
	switch (fsutil_lease(job->source_fd, job->pipeline->opts.sigio_ignored)) {
	case 1:
		job->leased = true;
		return 0;
	case -1:
		return source_busy(job, err, "source is open for writing");
	default:
		return 0;
	}
}

/* After the read: a broken lease means a writer opened the file during
 * it (its open waits for our release, so it has not written yet - but it
 * will, and what we read may be the older half of its version). */
static int unlease_source(struct job *job, struct error *err)
{
	int rc = 0;

	if (!job->leased)
		return 0;
	if (fcntl(job->source_fd, F_GETLEASE) != F_RDLCK)
		rc = source_busy(job, err, "source opened for writing while it "
				 "was read");
	fcntl(job->source_fd, F_SETLEASE, F_UNLCK);
	job->leased = job->leased_early = false;
	return rc;
}

static void hex_digest(EVP_MD_CTX *ctx, char *hex)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	hex[0] = '\0';
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
		return;
	/* Once per file: a table, not 32 snprintf() calls (PROFILE §17). */
	for (unsigned i = 0; i < mdlen && i < 32; i++) {
		hex[2 * i] = "0123456789abcdef"[md[i] >> 4];
		hex[2 * i + 1] = "0123456789abcdef"[md[i] & 0xf];
	}
	hex[2 * (mdlen < 32 ? mdlen : 32)] = '\0';
}

#define SNAPSHOT_CHUNK (256 * 1024)

/* All of buf at off, or -1 with errno (a short write is retried, so the
 * error reported is the real one, ENOSPC). */
static int write_all(int fd, const unsigned char *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, buf + done, len - done, off + (off_t)done);

		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

/*
 * pread(fd, at, want, off), asking in the same call for one byte past
 * the last chunk (into *probe) when this chunk ends at size: a regular
 * file reads short only at its end, so the call says both "these are the
 * bytes" and "nothing follows" - one system call for a small file where
 * a second pread for the end used to be needed. Returns the bytes read
 * into at (want + 1 means the file grew: the probe byte came too).
 */
static ssize_t read_with_probe(int fd, unsigned char *at, size_t want,
			       off_t off, off_t size, unsigned char *probe)
{
	struct iovec iov[2] = { { at, want }, { probe, 1 } };

	if (at == probe || off + (off_t)want != size)
		return pread(fd, at, want, off);
	return preadv(fd, iov, 2, off);
}

/* Bytes [0, size) of the source into dst (memory) or out (a file), one
 * pass, hashed when ctx; one byte more would mean it grew meanwhile. */
static int read_source_once(struct job *job, unsigned char *dst, int out,
			    EVP_MD_CTX *ctx, struct error *err)
{
	off_t size = job->source_st.st_size, off = 0;
	unsigned char *buf = dst ? NULL : malloc(SNAPSHOT_CHUNK);
	int rc = 0;

	if (dst == NULL && buf == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "snapshot");
	while (rc == 0 && off <= size) {
		unsigned char extra, *at = dst ? dst + off : buf;
		size_t want = dst ? (size_t)(size - off) :
			      (size - off < SNAPSHOT_CHUNK ? (size_t)(size - off) :
			       SNAPSHOT_CHUNK);
		ssize_t n;

		if (off == size) {
			at = &extra;
			want = 1;
		}
		n = read_with_probe(job->source_fd, at, want, off, size, &extra);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			rc = error_set(err, ERROR_TRANSIENT, errno, "cannot read source");
		else if (off == size && n == 0)
			break;
		else if (n == 0 || off == size || n > (ssize_t)want)
			rc = source_busy(job, err,
					 "source changed while it was read");
		else if (ctx != NULL && EVP_DigestUpdate(ctx, at, (size_t)n) != 1)
			rc = error_set(err, ERROR_TRANSIENT, 0, "sha256");
		else if (out != -1 && write_all(out, at, (size_t)n, off) == -1)
			rc = error_set(err, error_kind_for_output_errno(errno),
				       errno, "cannot write snapshot");
		else if ((off += n) == size)
			/* The probe byte came back empty in the same call:
			 * the file ends where its size said (the version
			 * check after the read confirms the size). */
			break;
	}
	free(buf);
	return rc;
}

/*
 * A source that stays where it is (dicomsort copying a folder) takes no
 * lease: nothing of it is destroyed, no watcher judged it finished, and a
 * write during the read still changes its ctime (or size), which the
 * version check after the read refuses - the only case left uncaught is
 * a writer holding the file open, idle, for the whole read, whose last
 * version a rerun copies. A source then disposed of (the daemon,
 * --move) keeps the lease: four fcntl() per file buy that guarantee.
 */
static bool wants_lease(const struct pipeline *in)
{
	return in->opts.disposal != PIPELINE_KEEP_SOURCE;
}

/* The hash serves the audit (source_sha256: the one reference to the
 * source a de-identified record may carry) and the disposal check. */
static bool wants_hash(const struct pipeline *in)
{
	return in->opts.hash_source || in->opts.disposal != PIPELINE_KEEP_SOURCE;
}

static bool rename_candidate(const struct job *job);

/*
 * Read the source exactly once into the private snapshot, hashing as it
 * goes, and check it was one version throughout: DCMTK re-reads large
 * values from its path when it saves, so it must be given a path nobody
 * else writes (the snapshot's /proc/self/fd path); and a sort copies the
 * snapshot, never the source again.
 */
static int take_snapshot(struct job *job, struct error *err)
{
	struct pipeline *in = job->pipeline;
	EVP_MD_CTX *ctx = wants_hash(in) ? EVP_MD_CTX_new() : NULL;
	int rc = 0;

	if (wants_hash(in) && (ctx == NULL ||
			       EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1))
		rc = error_set(err, ERROR_TRANSIENT, ENOMEM, "sha256");
	if (rc == 0 && job->source_st.st_size <= DICOM_LOAD_IN_MEMORY) {
		job->snap_mem = dicom_bytes_new(&job->snap_bytes,
						(size_t)job->source_st.st_size);
		if (job->snap_mem == NULL)
			rc = error_set(err, ERROR_TRANSIENT, ENOMEM, "snapshot");
	} else if (rc == 0) {
		reopen_output_if_removed(in);
		job->snap_fd = fsutil_anon_tmpfile_at(in->output_fd, job->snap_name,
						      sizeof(job->snap_name), err);
		if (job->snap_fd == -1)
			rc = -1;
	}
	/* Leased at open already (open_source()): that lease covers the
	 * read, and a rename candidate's, found intact after it, is kept
	 * until its claim (fsutil_move's source_leased): three fcntl and a
	 * look at the name less per renamed file. */
	if (rc == 0 && wants_lease(in)) {
		if (job->leased_early)
			job->leased = true;
		else
			rc = lease_source(job, err);
	}
	if (rc == 0)
		rc = read_source_once(job, job->snap_mem, job->snap_fd, ctx, err);
	if (job->leased) {
		struct error ignored = ERROR_INIT;

		if (rc == 0 && job->leased_early && rename_candidate(job) &&
		    fcntl(job->source_fd, F_GETLEASE) == F_RDLCK)
			job->leased = false;	/* kept, see above */
		else if (unlease_source(job, rc == 0 ? err : &ignored) == -1)
			rc = -1;
	}
	if (rc == 0)
		rc = check_source_version(job, err);
	if (rc == 0 && ctx != NULL)
		hex_digest(ctx, job->sha256);
	EVP_MD_CTX_free(ctx);
	job->snapshot = rc == 0;
	return rc;
}

/* A rename candidate that nothing will change: its bytes are never read
 * here (the inode becomes the output), so only what the decision needs
 * is (dicom_load_fd_head()). Anything else - a copy after all, a changed
 * PatientID - has the adapter read the rest. */
static bool head_only(const struct job *job)
{
	return !job->snapshot && rename_candidate(job) &&
	       job->pipeline->opts.deid.profile == DEID_NONE;
}

/* Parse the snapshot (or, with no snapshot, the descriptor opened: a
 * large value is then re-read through its /proc path, the same inode,
 * and the version is checked after the last read). */
static int load_source(struct job *job, struct error *err)
{
	char proc_path[64];
	int fd = job->snapshot && job->snap_fd != -1 ? job->snap_fd :
		 job->source_fd;

	if (job->snap_mem != NULL) {
		job->snap_mem = NULL;	/* the parsed file's bytes now */
		return dicom_load_bytes(&job->file, job->snap_bytes, err);
	}
	fsutil_proc_fd_path(proc_path, sizeof(proc_path), fd);
	if ((head_only(job) ? dicom_load_fd_head : dicom_load_fd)(&job->file,
			fd, job->source_st.st_size, proc_path, err) == -1)
		return -1;
	/* A rename candidate's version is checked where its output is made,
	 * after every read: by its claim (fsutil_move(), under the lease)
	 * or after its copy (fill_temp()). One fstat less per file. */
	if (job->snapshot || rename_candidate(job))
		return 0;
	return check_source_version(job, err);
}

/* ---- step 2: where it goes ---- */

static const char *layout_value(void *ctx, const char *keyword)
{
	struct job *job = ctx;
	const struct compiled_layout *cl = job->layout;

	for (size_t i = 0; i < layout_placeholder_count(cl->layout); i++) {
		if (strcmp(layout_placeholder(cl->layout, i), keyword) != 0)
			continue;
		free(job->values[i]);
		job->values[i] = NULL;
		if (dicom_get_string(job->file, cl->tags[i], &job->values[i]) != 1)
			return NULL;
		return job->values[i];
	}
	return NULL;
}

static int expand(struct job *job, const struct compiled_layout *cl,
		  char *out, size_t len, struct error *err)
{
	job->layout = cl;
	return layout_expand(cl->layout, layout_value, job, out, len, err);
}

static int destination(struct job *job, const char *source_path,
		       char *dir, size_t dirlen, char *name, size_t namelen,
		       struct error *err)
{
	struct pipeline *in = job->pipeline;
	char base[PATH_MAX];

	if (expand(job, &in->dirs, dir, dirlen, err) == -1)
		return -1;
	if (in->name.layout != NULL)
		return expand(job, &in->name, name, namelen, err);
	fsutil_copy_str(base, sizeof(base), source_path);
	if (fsutil_copy_str(name, namelen, basename(base)) >= namelen)
		return error_set(err, ERROR_INPUT, ENAMETOOLONG, "file name");
	return 0;
}

/* ---- step 3: write a temp file and publish it without overwriting ---- */

/* fsync before publishing/disposing: always under SYNC_EACH; under
 * SYNC_DISPOSAL only when the source is then destroyed; under SYNC_GROUP
 * never (pipeline_commit() does, for many files at once). */
static bool sync_each(const struct pipeline *in)
{
	return in->opts.sync == PIPELINE_SYNC_EACH ||
	       (in->opts.sync == PIPELINE_SYNC_DISPOSAL &&
		in->opts.disposal != PIPELINE_KEEP_SOURCE);
}

/* This job's output is synced by itself (not by a group commit). */
static bool sync_job(const struct job *job)
{
	return sync_each(job->pipeline) || job->foreign_fs;
}

/* Under SYNC_GROUP: whether the destination folder is beyond the commit's
 * syncfs (st_dev names the file system syncfs(2) flushes). */
static int check_group_fs(struct job *job, struct error *err)
{
	struct stat st;

	if (job->pipeline->opts.sync != PIPELINE_SYNC_GROUP)
		return 0;
	if (fstat(job->dir_fd, &st) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "fstat");
	job->foreign_fs = st.st_dev != job->pipeline->output_dev;
	return 0;
}

/* Nothing to change and a Part 10 file whose meta header matches its
 * dataset: the source's own bytes are the output. DCMTK parsed the whole
 * file at load (a value cut short, pixel data included, was refused there),
 * so copying them keeps every guarantee while skipping the re-encoding. */
static bool reuse_source_bytes(struct job *job)
{
	char magic[4];
	int fd = job->snap_fd != -1 ? job->snap_fd : job->source_fd;

	const unsigned char *mem;
	size_t len;

	if (!dicom_bytes_reusable(job->file) || job->source_st.st_size < 132)
		return false;
	mem = dicom_file_head(job->file, &len);
	if (mem != NULL)
		return len >= 132 && memcmp(mem + 128, "DICM", 4) == 0;
	/* A snapshot in memory without its bytes: DCMTK writes the parsed
	 * snapshot; the source is never read again (another version now?). */
	if (job->snapshot && job->snap_fd == -1)
		return false;
	return pread(fd, magic, sizeof(magic), 128) == 4 &&
	       memcmp(magic, "DICM", 4) == 0;
}

/*
 * The output root removed while we run (its link count is 0): open it again
 * by its path, creating it, so output resumes by itself instead of failing
 * forever on the descriptor of a deleted folder. dup3() swaps the folder
 * behind the descriptor number atomically: a job using the old one at that
 * moment fails and is retried.
 */
static void reopen_output_if_removed(struct pipeline *in)
{
	struct error ignored = ERROR_INIT;
	struct stat st;
	int fresh;

	if (fstat(in->output_fd, &st) == -1 || st.st_nlink > 0)
		return;
	fresh = fsutil_open_dir(in->opts.output_dir, true, &ignored);
	if (fresh == -1)
		return;
	dup3(fresh, in->output_fd, O_CLOEXEC);
	close(fresh);
}

/*
 * Each thread keeps its last destination folder open: the files of a
 * series arrive together, and walking the folder down from the root again
 * costs two system calls per level (one call in all where every folder
 * exists; the daemon, PIPELINE_SYNC_GROUP, looks each file's folder up
 * so and never reuses the cached one). The job borrows the descriptor
 * (job->dir_cached) - one job at a time runs on a thread - and a hit costs
 * no system call: a cached folder deleted meanwhile shows when creating
 * the temp file in it fails (write_temp() walks again then), or when a
 * later step fails (the job drops the cache, its retry walks again).
 * how: whether a new folder's parent is fsynced (FSUTIL_DIRS_DEFER: a
 * rename's, or a copy's under a final syncfs; see dirs_deferred).
 */
static __thread struct {
	unsigned long generation;
	int fd;
	char path[PATH_MAX];
} last_dir = { 0, -1, "" };

static void drop_cached_dir(void)
{
	if (last_dir.fd != -1)
		close(last_dir.fd);
	last_dir.fd = -1;
	last_dir.path[0] = '\0';
}

static int mkdirs_output(struct job *job, const char *dir,
			 enum fsutil_dirs_sync how, struct error *err)
{
	struct pipeline *in = job->pipeline;
	int fd;

	job->dir_cached = false;
	/* The daemon runs for months while people reorganise the output: a
	 * series folder renamed away between two of its files would take
	 * the second one by its cached descriptor. Looking the path up
	 * again costs one call (fsutil_open_existing_at()). */
	if (last_dir.fd != -1 && last_dir.generation == in->generation &&
	    in->opts.sync != PIPELINE_SYNC_GROUP &&
	    strcmp(last_dir.path, dir) == 0) {
		job->dir_cached = true;
		return last_dir.fd;
	}
	/* Said before the walk: whoever then finds a folder it made knows. */
	if (how == FSUTIL_DIRS_DEFER)
		atomic_store(&in->dirs_deferred, true);
	/* A folder found under the root (the common case: one call) means
	 * a live root, as a live cached one does; only a miss looks. */
	fd = how == FSUTIL_DIRS_SYNC_PATH ? -1 :
	     fsutil_open_existing_at(in->output_fd, dir);
	if (fd == -1) {
		reopen_output_if_removed(in);
		fd = fsutil_mkdirs_sync_at(in->output_fd, dir, how, err);
	}
	if (fd == -1 || strlen(dir) >= sizeof(last_dir.path))
		return fd;
	drop_cached_dir();
	last_dir.fd = fd;
	last_dir.generation = in->generation;
	strcpy(last_dir.path, dir);
	job->dir_cached = true;
	return fd;
}

/* Whether the anonymous snapshot can be linked into dirfd: linkat()
 * works only within one mount (a bind mount inside the output tree is
 * another). */
static bool same_mount(int a, int b)
{
	struct statx sa, sb;

	return statx(a, "", AT_EMPTY_PATH, STATX_MNT_ID, &sa) == 0 &&
	       statx(b, "", AT_EMPTY_PATH, STATX_MNT_ID, &sb) == 0 &&
	       (sa.stx_mask & STATX_MNT_ID) && (sb.stx_mask & STATX_MNT_ID) &&
	       sa.stx_mnt_id == sb.stx_mnt_id;
}

/* The output's bytes: the snapshot's own (in memory, or the snapshot
 * file itself, which then becomes the output), or what DCMTK writes from
 * the parsed snapshot. Without a snapshot (rename candidates), whatever
 * was read from the source is checked to be one version afterwards. */
static int fill_temp(struct job *job, struct error *err)
{
	off_t size = job->source_st.st_size;
	const unsigned char *mem;
	size_t len;

	/* Parsed from memory: the very bytes parsed. */
	if (job->copy_bytes && job->snapshot &&
	    (mem = dicom_file_bytes(job->file, &len)) != NULL) {
		if (write_all(job->tmp_fd, mem, len, 0) == -1)
			return error_set(err, error_kind_for_output_errno(errno),
					 errno, "cannot write");
		return 0;
	}
	if (job->copy_bytes && job->snap_fd != -1)
		return fsutil_copy_fd(job->snap_fd, job->tmp_fd, size, err);
	if ((job->copy_bytes ?
	     fsutil_copy_fd(job->source_fd, job->tmp_fd, size, err) :
	     dicom_save_fd(job->file, job->tmp_fd, err)) == -1)
		return -1;
	return job->snapshot ? 0 : check_source_version(job, err);
}

/* A copy's new folders: their parents fsynced with the file (sync_each),
 * or left to the syncfs() the caller ends with. Under a group commit they
 * are synced when made: the folder may turn out to be on another file
 * system (a mount inside the output) than the one the commit flushes,
 * and a new folder is rare. */
static enum fsutil_dirs_sync copy_dirs_sync(const struct pipeline *in)
{
	return sync_each(in) || in->opts.sync == PIPELINE_SYNC_GROUP ?
	       FSUTIL_DIRS_SYNC_NEW : FSUTIL_DIRS_DEFER;
}

/* An anonymous temp file in the destination folder, created with the
 * output's mode; a cached folder that fails to take it (deleted since)
 * is walked - and created - again, once. */
static int create_temp(struct job *job, const char *dir, struct error *err)
{
	mode_t mode = job->pipeline->file_mode;

	job->tmp_fd = fsutil_anon_tmpfile_mode_at(job->dir_fd, mode,
						  job->tmp_name,
						  sizeof(job->tmp_name), err);
	if (job->tmp_fd != -1 || !job->dir_cached)
		return job->tmp_fd;
	drop_cached_dir();
	job->dir_fd = mkdirs_output(job, dir, copy_dirs_sync(job->pipeline),
				    err);
	if (job->dir_fd == -1)
		return -1;
	error_clear(err);
	job->tmp_fd = fsutil_anon_tmpfile_mode_at(job->dir_fd, mode,
						  job->tmp_name,
						  sizeof(job->tmp_name), err);
	return job->tmp_fd;
}

static int write_temp(struct job *job, const char *dir, struct error *err)
{
	bool chmod_needed = true;

	if (job->dir_fd == -1)
		job->dir_fd = mkdirs_output(job, dir, copy_dirs_sync(job->pipeline),
					    err);
	if (job->dir_fd == -1 || check_group_fs(job, err) == -1)
		return -1;
	if (job->copy_bytes && job->snap_fd != -1 && job->snap_name[0] == '/' &&
	    same_mount(job->snap_fd, job->dir_fd)) {
		/* The snapshot is the output: no byte is written twice. */
		job->tmp_fd = job->snap_fd;
		memcpy(job->tmp_name, job->snap_name, sizeof(job->tmp_name));
		job->snap_fd = -1;
	} else {
		/* Anonymous until published: a crash leaves no temp file. */
		if (create_temp(job, dir, err) == -1 || fill_temp(job, err) == -1)
			return -1;
		chmod_needed = job->tmp_name[0] != '/';
	}
	if (chmod_needed && fchmod(job->tmp_fd, job->pipeline->file_mode) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "fchmod");
	if (sync_job(job))
		return fsutil_fsync(job->tmp_fd, "output file", err);
	return 0;
}

/* 1 when the file already named name holds exactly our bytes. */
static int identical_to(struct job *job, const char *name, struct error *err)
{
	int fd = openat(job->dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	int same;

	if (fd == -1)
		return errno == ELOOP ? 0 :
		       error_set(err, ERROR_TRANSIENT, errno, "cannot open %s", name);
	same = fsutil_same_content(job->tmp_fd, fd, err);
	/* The copy we rely on instead of ours may not be durable yet. */
	if (same == 1 && sync_job(job) &&
	    fsutil_fsync(fd, name, err) == -1)
		same = -1;
	close(fd);
	return same;
}

static int publish_as(struct job *job, const char *dir, const char *name,
		      char *final, size_t finallen, struct pipeline_result *res)
{
	struct error *err = &res->err;
	const struct pipeline_hooks *h = job->hooks;
	struct stat out_st;
	char hash[17] = "";

	if (h != NULL && h->before_publish != NULL &&
	    fstat(job->tmp_fd, &out_st) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "fstat");
	for (unsigned n = 0; n < FSUTIL_PLAIN_CLASHES + MAX_NUMBERED_NAMES; n++) {
		int rc, same;

		if (n == FSUTIL_PLAIN_CLASHES &&
		    fsutil_hash_fd(job->tmp_fd, hash, err) == -1)
			return -1;
		if (fsutil_clash_name(name, n, hash, final, finallen) == -1)
			return error_set(err, ERROR_INPUT, ENAMETOOLONG, "file name");
		snprintf(res->dest, sizeof(res->dest), "%s/%s", dir, final);
		if (h != NULL && h->before_publish != NULL &&
		    h->before_publish(h->ctx, res, &out_st, err) == -1)
			return -1;
		rc = fsutil_publish(job->dir_fd, job->tmp_name, final, err);
		if (rc == -1)
			return -1;
		if (rc == 0) {
			job->published = true;
			close(job->tmp_fd);
			job->tmp_fd = -1;
			res->status = PIPELINE_STORED;
			res->same_uid_conflict = n > 0 && job->pipeline->name.layout;
			if (sync_job(job))
				return fsutil_fsync(job->dir_fd, "output folder", err);
			return 0;
		}
		same = identical_to(job, final, err);
		if (same == -1)
			return -1;
		if (same == 1) {
			res->status = PIPELINE_DUPLICATE;
			return 0;	/* job_release() removes the temp file */
		}
	}
	return error_set(err, ERROR_INPUT, 0, "too many files named %s", name);
}

/* Publication, with the hooks told whether a file appeared. One whose
 * folder fsync then failed did appear (so its record is owed: records
 * must match the files), and the result is a failure: the retry finds it,
 * syncs it and takes it as a duplicate. */
static int publish(struct job *job, const char *dir, const char *name,
		   char *final, size_t finallen, struct pipeline_result *res)
{
	int rc = publish_as(job, dir, name, final, finallen, res);
	const struct pipeline_hooks *h = job->hooks;

	/* Group commit: the output (ours, or the identical one already
	 * there) is durable only after the next pipeline_commit(), and the
	 * source waits for it; the hooks are told so. */
	if (rc == 0 && job->pipeline->opts.sync == PIPELINE_SYNC_GROUP &&
	    !job->foreign_fs) {
		res->dispose_pending = true;
		memcpy(res->read_sha256, job->sha256, sizeof(res->read_sha256));
	}

	if (h != NULL && h->after_publish != NULL)
		h->after_publish(h->ctx, res, job->published);
	return rc;
}

/* ---- step 4: the source goes only once its output is durable ---- */

/* The processed folder keeps the source under its relative path; a later
 * source of the same name gets a numbered name, never the earlier's. */
static int move_source(struct pipeline *in, const struct pipeline_read *read,
		       const char *path, const char *rel, char *disposed_as,
		       size_t len, bool *changed, struct error *err)
{
	char relcopy[PATH_MAX], basecopy[PATH_MAX];
	struct fsutil_move mv = { .source = path, .expect = &read->st,
				  .expect_sha256 = read->sha256[0] ?
						   read->sha256 : NULL };
	const char *subdir;
	int rc;

	snprintf(relcopy, sizeof(relcopy), "%s", rel ? rel : path);
	snprintf(basecopy, sizeof(basecopy), "%s", relcopy);
	subdir = rel && strchr(rel, '/') ? dirname(relcopy) : "";
	mv.dest_dirfd = fsutil_mkdirs_at(in->processed_fd, subdir, err);
	if (mv.dest_dirfd == -1)
		return -1;
	mv.name = basename(basecopy);
	rc = fsutil_move(&mv, err);
	*changed = mv.changed;
	if (rc == -1 && mv.side == FSUTIL_SIDE_DEST)
		snprintf(err->msg, sizeof(err->msg), "%s",
			 "cannot move the source to the processed folder");
	if (rc == 0)
		snprintf(disposed_as, len, "%s%s%s", subdir, subdir[0] ? "/" : "",
			 mv.final);
	close(mv.dest_dirfd);
	return rc;
}

/*
 * A file that may become the output itself. dicomsort --move takes no
 * snapshot of it (the inode is the output, checked at its claim). One
 * whose hash is asked for (the daemon's records) is read whole anyway:
 * into memory, which a failed rename can still copy from (the version
 * read is stored, as a copy's would be); a larger one goes to a snapshot
 * file on the output's file system, which becomes the output itself
 * (linked, no byte written twice), so it is not renamed.
 */
static bool rename_candidate(const struct job *job)
{
	const struct pipeline *in = job->pipeline;

	return in->opts.rename_unchanged &&
	       (!in->opts.hash_source ||
		job->source_st.st_size <= DICOM_LOAD_IN_MEMORY) &&
	       in->opts.disposal == PIPELINE_DELETE_SOURCE &&
	       job->source_st.st_dev == in->output_dev &&
	       job->source_st.st_nlink == 1 &&
	       (job->source_st.st_uid == in->euid || in->euid == 0) &&
	       (!in->opts.rename_same_group ||
		job->source_st.st_gid == in->new_gid);
}

/*
 * Each thread keeps the folder of its last renamed source open as well:
 * the input is walked folder by folder. Owned by the cache; dropped when
 * a move fails on the source's side (a folder replaced meanwhile is
 * opened again by the next file).
 */
static __thread struct {
	unsigned long generation;
	int fd;
	char path[PATH_MAX];
} last_src = { 0, -1, "" };

static void drop_source_folder(void)
{
	if (last_src.fd != -1)
		close(last_src.fd);
	last_src.fd = -1;
}

static int source_folder(const struct pipeline *in, const char *path)
{
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];
	int fd;

	snprintf(dir, sizeof(dir), "%.*s", slash == NULL ? 1 :
		 slash == path ? 1 : (int)(slash - path),
		 slash == NULL ? "." : path);
	if (last_src.fd != -1 && last_src.generation == in->generation &&
	    strcmp(last_src.path, dir) == 0)
		return last_src.fd;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	drop_source_folder();
	last_src.fd = fd;
	last_src.generation = in->generation;
	snprintf(last_src.path, sizeof(last_src.path), "%s", dir);
	return fd;
}

/* What fsutil_move() tells rename_source()'s hooks about. */
struct naming {
	struct job *job;
	struct pipeline_result *res;
	const char *dir;
};

/* Each name the claimed source may take, told as publish_as() tells a
 * temp file's: the daemon notes its pending record there, with the
 * identity the output will have (the source's own inode, size, mtime). */
static int tell_naming(void *ctx, const char *name, const struct stat *st,
		       struct error *err)
{
	struct naming *n = ctx;
	const struct pipeline_hooks *h = n->job->hooks;

	fsutil_join_path(n->res->dest, sizeof(n->res->dest), n->dir, name);
	if (h->checkpoint != NULL)
		h->checkpoint(h->ctx, PIPELINE_AT_CLAIMED);
	if (h->before_publish == NULL)
		return 0;
	return h->before_publish(h->ctx, n->res, st, err);
}

/*
 * Deleting a source whose bytes are the output, on the output's file
 * system: move the source itself to its final name (fsutil_move: claimed,
 * never replacing, numbered on a clash; a bind mount between the two
 * makes it a copy). No byte is destroyed - the inode keeps its data
 * under one name or the other, whatever happens - so "durable before
 * disposal" holds without an fsync; SYNC_EACH still fsyncs the file and
 * its new folder, SYNC_DISPOSAL leaves that to pipeline_sync_all(), and
 * SYNC_GROUP to the next pipeline_commit() (result.renamed, pending like
 * a copy: the caller sends its record after the commit and has nothing
 * to dispose of). A clash with identical bytes is a duplicate and the
 * source goes (after a syncfs of the destination). The hooks hear of it
 * as of a publication. Returns 1 when this cannot be done here (caller
 * copies instead): another link or owner, or a source that cannot be
 * claimed.
 */
static int rename_source(struct job *job, const char *path, const char *dir,
			 const char *name, char *final, size_t finallen,
			 struct pipeline_result *res)
{
	struct pipeline *in = job->pipeline;
	const struct pipeline_hooks *h = job->hooks;
	struct error *err = &res->err;
	struct naming naming = { job, res, dir };
	/* Under SYNC_DISPOSAL (batch --move) the names wait for
	 * pipeline_sync_all(): a group commit, no fsync per file. The lease
	 * goes on the descriptor read; its folder is the cached one. A
	 * ctime moved since the read (our rename in, a chmod) is the same
	 * version if the bytes still hash to what was read. */
	struct fsutil_move mv = { .source = path, .expect = &job->source_st,
				  .expect_sha256 = job->sha256[0] ?
						   job->sha256 : NULL,
				  .name = name, .mode = in->file_mode,
				  .naming = h != NULL ? tell_naming : NULL,
				  .ctx = &naming,
				  .defer_sync = in->opts.sync != PIPELINE_SYNC_EACH,
				  .source_fd = &job->source_fd,
				  .source_leased = job->leased_early };
	int src_dirfd, rc;

	/* Renamed, the inode becomes the output. One with other links would
	 * stay reachable (and writable) from outside the output tree, and a
	 * source of another owner cannot get the output's mode: copy those. */
	if (job->source_st.st_nlink != 1 ||
	    (job->source_st.st_uid != in->euid && in->euid != 0))
		return 1;
	/* A rename destroys nothing: its new folders, too, wait for the
	 * group commit. */
	job->dir_fd = mkdirs_output(job, dir, mv.defer_sync ? FSUTIL_DIRS_DEFER :
				    FSUTIL_DIRS_SYNC_NEW, err);
	if (job->dir_fd == -1)
		return -1;
	mv.dest_dirfd = job->dir_fd;
	/* A watched input (the daemon's, SYNC_GROUP) is not held open
	 * between files: an open folder removed (the daemon's cleanup of
	 * emptied folders) sends its IN_DELETE_SELF only once closed, and
	 * until then the watch takes a folder made again under its name
	 * for the dead one. fsutil_move() opens it for the one file. */
	src_dirfd = in->opts.sync == PIPELINE_SYNC_GROUP ? -1 :
		    source_folder(in, path);
	if (src_dirfd != -1)
		mv.source_dirfd = &src_dirfd;
	rc = fsutil_move(&mv, err);
	if (rc == -1 && mv.side == FSUTIL_SIDE_SOURCE && !mv.placed &&
	    (!mv.changed || job->snapshot)) {
		/* Not claimed (a folder that does not let us rename in it,
		 * the name gone), or no longer the version read (a writer
		 * has it open, or rewrote it): copied as any other file -
		 * the version read, from the snapshot - whose disposal then
		 * says what became of the source. Without a snapshot a
		 * changed source is taken again once settled. */
		drop_source_folder();
		if (h != NULL && h->after_publish != NULL)
			h->after_publish(h->ctx, res, false);
		error_clear(err);
		return 1;
	}
	if (rc == -1) {
		if (mv.side == FSUTIL_SIDE_SOURCE)
			drop_source_folder();
		/* A writer has it open, or it changed since it was read:
		 * not finished, taken again once settled. */
		if (mv.changed)
			job->busy = true;
	} else {
		fsutil_copy_str(final, finallen, mv.final);
		res->status = mv.existed ? PIPELINE_DUPLICATE : PIPELINE_STORED;
	}
	if (rc == 0 && !mv.existed) {
		res->same_uid_conflict = strcmp(mv.final, name) != 0 &&
					 in->name.layout;
		/* A copy (another mount) was synced and its source removed
		 * by fsutil_move() itself; a rename waits for the commit. */
		res->renamed = !mv.copied;
		res->dispose_pending = res->renamed &&
				       in->opts.sync == PIPELINE_SYNC_GROUP;
		if (in->opts.sync == PIPELINE_SYNC_EACH && !mv.copied &&
		    fsutil_fsync(job->source_fd, "output file", err) == -1)
			rc = -1;
	}
	/* Records match files: a name taken is owed its record even when
	 * a later step failed (the retry finds it, a duplicate). */
	if (h != NULL && h->after_publish != NULL)
		h->after_publish(h->ctx, res, mv.placed && !mv.existed);
	return rc;
}

int pipeline_dispose(struct pipeline *in, const char *path, const char *rel,
		     const struct pipeline_read *read, char *disposed_as,
		     size_t len, bool *changed, struct error *err)
{
	struct fsutil_remove_args rm = { .source = path, .expect = &read->st,
					 .expect_sha256 = read->sha256[0] ?
							  read->sha256 : NULL };
	int rc = 0;

	disposed_as[0] = '\0';
	*changed = false;
	switch (in->opts.disposal) {
	case PIPELINE_KEEP_SOURCE:
		break;
	case PIPELINE_DELETE_SOURCE:
		rc = fsutil_remove_checked(&rm, err);
		*changed = rm.changed;
		break;
	case PIPELINE_MOVE_SOURCE:
		rc = move_source(in, read, path, rel, disposed_as, len, changed,
				 err);
		break;
	}
	return rc;
}

/* The output is durable: what happens to the source now is a fact of
 * its own, reported beside the result, never turning it into a failure.
 * It goes only if it is still the version read (the check comes now,
 * right before it goes, not when the output was written); a source
 * changed meanwhile stays, to be processed again (source_changed). */
/*
 * Renames of this run left new folders unsynced (dirs_deferred): the
 * output's folder, or one above it, may be one of them, found rather
 * than made by this job. Before its source is destroyed the whole path
 * is synced - each folder's parent, and the folder itself (a duplicate's
 * name was not synced by publication). Only runs that mix renames with
 * copies pay for it.
 */
static int sync_output_path(struct job *job, const char *dest,
			    struct error *err)
{
	struct pipeline *in = job->pipeline;
	char dir[PATH_MAX];
	const char *slash = strrchr(dest, '/');
	int fd, rc = 0;

	if (!atomic_load(&in->dirs_deferred) || in->opts.sync == PIPELINE_SYNC_NONE)
		return 0;
	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - dest) : 0, dest);
	fd = fsutil_mkdirs_sync_at(in->output_fd, dir, FSUTIL_DIRS_SYNC_PATH, err);
	if (fd == -1)
		return -1;
	rc = fsutil_fsync(fd, "output folder", err);
	close(fd);
	return rc;
}

static void dispose_source(struct job *job, const char *path, const char *rel,
			   struct pipeline_result *res)
{
	const struct pipeline_hooks *h = job->hooks;
	struct pipeline_read read = { .st = job->source_st };

	if (job->pipeline->opts.disposal != PIPELINE_KEEP_SOURCE &&
	    sync_output_path(job, res->dest, &res->dispose_err) == -1) {
		res->dispose_failed = true;
		return;
	}
	if (h != NULL && h->checkpoint != NULL)
		h->checkpoint(h->ctx, PIPELINE_AT_DURABLE);
	memcpy(read.sha256, job->sha256, sizeof(read.sha256));
	if (pipeline_dispose(job->pipeline, path, rel, &read, res->disposed_as,
			     sizeof(res->disposed_as), &res->source_changed,
			     &res->dispose_err) == -1)
		res->dispose_failed = true;
}

/* A value as it will be stored, cut to fit; "" when absent. */
static void stored_value(struct dicom_file *file, uint32_t tag, char *out,
			 size_t len)
{
	char *v = NULL;

	out[0] = '\0';
	if (dicom_get_string(file, tag, &v) == 1 && v != NULL)
		fsutil_copy_str(out, len, v);
	free(v);
}

void pipeline_result_set_study(struct pipeline_result *res,
			       struct dicom_file *file)
{
	stored_value(file, TAG_StudyInstanceUID, res->study_uid,
		     sizeof(res->study_uid));
	stored_value(file, TAG_SeriesInstanceUID, res->series_uid,
		     sizeof(res->series_uid));
	stored_value(file, TAG_SeriesNumber, res->series_number,
		     sizeof(res->series_number));
	stored_value(file, TAG_SeriesDescription, res->series_description,
		     sizeof(res->series_description));
}

static void inspect(struct job *job, bool deidentified)
{
	if (job->hooks != NULL && job->hooks->inspect != NULL)
		job->hooks->inspect(job->hooks->ctx, job->file, deidentified);
}

/* The output keeps the source's meta header (copied, renamed or
 * spliced; DCMTK writes a fresh one): say so when it disagrees with the
 * dataset, which the layout and the result read. */
static void note_kept_meta(struct job *job, struct pipeline_result *res)
{
	res->warning = job->copy_bytes || !dicom_parsed(job->file) ?
		       dicom_meta_disagreement(job->file) : NULL;
}

static int stage(struct job *job, const char *dir, const char *name);
static int copy_out(struct job *job, const char *path, const char *rel,
		    const char *dir, const char *name,
		    struct pipeline_result *res);

static int run(struct job *job, const char *path, const char *rel,
	       struct pipeline_result *res)
{
	struct error *err = &res->err;
	struct deid_options deid = job->pipeline->opts.deid;
	char dir[PATH_MAX], name[NAME_MAX + 1], final[NAME_MAX + 1];
	char *uid = NULL;

	if (open_source(job, path, err) == -1)
		return -1;
	res->source_st = job->source_st;
	/* A dry run writes nothing and disposes of nothing: no snapshot.
	 * A rename candidate needs none either, unless its hash is asked
	 * for (the daemon's records): then it is read and hashed once, in
	 * memory, and its claim checks that version is what is renamed. */
	if (!job->pipeline->opts.dry_run &&
	    (!rename_candidate(job) || job->pipeline->opts.hash_source) &&
	    take_snapshot(job, err) == -1)
		return -1;
	if (job->pipeline->opts.hash_source)
		memcpy(res->source_sha256, job->sha256, sizeof(res->source_sha256));
	if (load_source(job, err) == -1)
		return -1;
	if (job->hooks != NULL && job->hooks->checkpoint != NULL)
		job->hooks->checkpoint(job->hooks->ctx, PIPELINE_AT_PARSED);
	job->table = current_table(job->pipeline);
	deid.table = job->table;
	inspect(job, false);
	if (deid_apply(&deid, job->file, &res->deid, err) == -1) {
		res->policy_rejected = err->kind == ERROR_INPUT;
		return -1;
	}
	inspect(job, true);
	if (res->deid.hold) {
		res->status = PIPELINE_HELD;
		return 0;
	}
	if (dicom_get_string(job->file, TAG_SOPInstanceUID, &uid) == 1)
		fsutil_copy_str(res->sop_instance_uid,
				sizeof(res->sop_instance_uid), uid);
	free(uid);
	pipeline_result_set_study(res, job->file);
	if (destination(job, path, dir, sizeof(dir), name, sizeof(name), err) == -1)
		return -1;
	if (job->pipeline->opts.dry_run) {
		snprintf(res->dest, sizeof(res->dest), "%s/%s", dir, name);
		res->status = PIPELINE_STORED;
		return 0;
	}
	job->copy_bytes = reuse_source_bytes(job);
	note_kept_meta(job, res);
	if (job->copy_bytes && rename_candidate(job)) {
		int rc;

		if (job->stage != NULL)
			return stage(job, dir, name);
		rc = rename_source(job, path, dir, name, final, sizeof(final),
				   res);
		if (rc != 1) {
			if (rc == 0)
				fsutil_join_path(res->dest, sizeof(res->dest),
						 dir, final);
			return rc;
		}
	}
	return copy_out(job, path, rel, dir, name, res);
}

/* The output written, published and the source disposed of: every file
 * that is not renamed into place. */
static int copy_out(struct job *job, const char *path, const char *rel,
		    const char *dir, const char *name,
		    struct pipeline_result *res)
{
	struct error *err = &res->err;
	char final[NAME_MAX + 1];

	if (write_temp(job, dir, err) == -1)
		return -1;
	if (job->file != NULL)	/* NULL: staged, copy_bytes decided it */
		note_kept_meta(job, res);	/* the splice decided at the write */
	if (publish(job, dir, name, final, sizeof(final), res) == -1)
		return -1;
	fsutil_join_path(res->dest, sizeof(res->dest), dir, final);
	if (!res->dispose_pending)
		dispose_source(job, path, rel, res);
	return 0;
}

/* Every field zero, every text "": as a memset of the whole, without
 * writing the 8 KiB of the two path buffers past their first byte. What
 * follows them (padding; a field added there by mistake) is zeroed too. */
static void result_clear(struct pipeline_result *res)
{
	size_t tail = offsetof(struct pipeline_result, disposed_as) +
		      sizeof(res->disposed_as);

	_Static_assert(offsetof(struct pipeline_result, dest) +
		       sizeof(((struct pipeline_result *)0)->dest) ==
		       offsetof(struct pipeline_result, disposed_as),
		       "dest and disposed_as must stay last, side by side");
	memset(res, 0, offsetof(struct pipeline_result, dest));
	memset((char *)res + tail, 0, sizeof(*res) - tail);
	res->dest[0] = '\0';
	res->disposed_as[0] = '\0';
}

int pipeline_file(struct pipeline *in, const char *source_path,
		const char *source_rel, struct pipeline_result *res)
{
	return pipeline_file_hooked(in, source_path, source_rel, NULL, res);
}

/* The end of every file, staged or not: its result's status, and what
 * the job held let go. */
static int end_job(struct job *job, int rc, struct pipeline_result *res)
{
	res->source_busy = rc == -1 && job->busy;
	job_release(job);
	/* A cached folder may be why it failed (deleted): a retry walks. */
	if (rc == -1 && job->dir_cached)
		drop_cached_dir();
	if (rc == -1)
		res->status = res->err.kind == ERROR_INPUT ? PIPELINE_REJECTED :
			      PIPELINE_FAILED;
	return rc;
}

int pipeline_file_hooked(struct pipeline *in, const char *source_path,
			 const char *source_rel, const struct pipeline_hooks *hooks,
			 struct pipeline_result *res)
{
	struct job job = { .pipeline = in, .source_fd = -1, .dir_fd = -1,
			   .tmp_fd = -1, .snap_fd = -1, .hooks = hooks };

	result_clear(res);
	return end_job(&job, run(&job, source_path, source_rel, res), res);
}

/*
 * A file stopped right before its renames (the claim in its folder, the
 * place in the output): the job as it is - the source's descriptor,
 * leased, its version - and where it goes. Nothing of the source has
 * moved yet. Its output folders exist (stage() made them); the thread
 * that finishes it opens the folder through its own cache, so no
 * descriptor but the job's passes between threads.
 */
struct pipeline_staged {
	struct job job;
	const char *path, *rel;
	char dir[PATH_MAX];
	char name[NAME_MAX + 1];
};

/* Stop a rename candidate before its renames (pipeline_staged). */
static int stage(struct job *job, const char *dir, const char *name)
{
	struct pipeline_staged *st = job->stage;
	struct error ignored = ERROR_INIT;
	enum fsutil_dirs_sync how;
	int fd;

	/* Its folders made here, off the renaming thread (a new inode each,
	 * the costliest call after the renames), as rename_source() would
	 * make them; a failure is the renaming thread's to meet and report. */
	how = job->pipeline->opts.sync != PIPELINE_SYNC_EACH ?
	      FSUTIL_DIRS_DEFER : FSUTIL_DIRS_SYNC_NEW;
	fd = mkdirs_output(job, dir, how, &ignored);
	if (fd != -1 && !job->dir_cached)
		close(fd);
	job->dir_cached = false;
	fsutil_copy_str(st->dir, sizeof(st->dir), dir);
	fsutil_copy_str(st->name, sizeof(st->name), name);
	/* What the parse gave is no longer needed (its result is taken; a
	 * copy after all takes the source's bytes, copy_bytes): freed by
	 * this thread, whose arena it came from. */
	for (size_t i = 0; i < MAX_PLACEHOLDERS; i++) {
		free(job->values[i]);
		job->values[i] = NULL;
	}
	dicom_free(job->file);
	job->file = NULL;
	job->staged = true;
	return 0;
}

struct pipeline_staged *pipeline_staged_new(void)
{
	return malloc(sizeof(struct pipeline_staged));
}

void pipeline_staged_free(struct pipeline_staged *st)
{
	free(st);
}

int pipeline_file_staged(struct pipeline *in, const char *source_path,
			 const char *source_rel, struct pipeline_result *res,
			 struct pipeline_staged *st, bool *staged)
{
	int rc;

	st->job = (struct job){ .pipeline = in, .source_fd = -1, .dir_fd = -1,
				.tmp_fd = -1, .snap_fd = -1, .stage = st };
	st->path = source_path;
	st->rel = source_rel;
	result_clear(res);
	rc = run(&st->job, source_path, source_rel, res);
	*staged = rc == 0 && st->job.staged;
	if (*staged)
		return 0;
	return end_job(&st->job, rc, res);
}

int pipeline_finish_staged(struct pipeline_staged *st,
			   struct pipeline_result *res)
{
	struct job *job = &st->job;
	char final[NAME_MAX + 1];
	int rc;

	rc = rename_source(job, st->path, st->dir, st->name, final,
			   sizeof(final), res);
	if (rc == 0)
		fsutil_join_path(res->dest, sizeof(res->dest), st->dir, final);
	else if (rc == 1)
		rc = copy_out(job, st->path, st->rel, st->dir, st->name, res);
	return end_job(job, rc, res);
}

void pipeline_dispose_result(struct pipeline *in, const char *path,
			     const char *rel, struct pipeline_result *res)
{
	struct pipeline_read read = { .st = res->source_st };

	memcpy(read.sha256, res->read_sha256, sizeof(read.sha256));
	res->dispose_pending = false;
	if (res->renamed)
		return;		/* the source is the output */
	if (pipeline_dispose(in, path, rel, &read, res->disposed_as,
			     sizeof(res->disposed_as), &res->source_changed,
			     &res->dispose_err) == -1)
		res->dispose_failed = true;
}

/* One syncfs for the group: data, inodes and folder entries of every file
 * of the output's file system. Through output_fd, opened at start: syncfs
 * reports a write-back error that happened since that open (errseq), once,
 * so a lost page is seen even when its file was closed long ago. */
int pipeline_commit(struct pipeline *in, struct error *err)
{
	if (in->output_fd == -1)
		return 0;
	if (syncfs(in->output_fd) == -1)
		return error_set(err, ERROR_TRANSIENT, errno,
				 "syncfs of the output file system (group "
				 "commit): outputs may not be on disk");
	return 0;
}

int pipeline_sync_all(struct pipeline *in, struct error *err)
{
	if (in->output_fd == -1)
		return 0;
	if (syncfs(in->output_fd) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "syncfs output");
	return 0;
}
