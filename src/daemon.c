/* daemon.c - the poll loop around watch, workers and pipeline; see daemon.h. */
#include "dicomsort/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "dicomsort/correlation.h"
#include "dicomsort/dicom.h"
#include "dicomsort/forward.h"
#include "dicomsort/fsutil.h"
#include "dicomsort/pipeline.h"
#include "dicomsort/log.h"
#include "dicomsort/metrics.h"
#include "dicomsort/notify.h"
#include "dicomsort/quarantine.h"
#include "dicomsort/records.h"
#include "dicomsort/studies.h"
#include "dicomsort/watch.h"
#include "dicomsort/workers.h"

enum slot { SLOT_SIGNAL, SLOT_WATCH, SLOT_TIMER, SLOT_DONE, SLOT_COMMIT,
	    SLOT_DISPOSED, SLOT_COUNT };

/*
 * Group commit (issue 14): a stored file's output is published without an
 * fsync and waits, its source untouched, until one syncfs of the output's
 * file system has made it and every other output published before it
 * durable; only then is its `stored` record sent and its source disposed
 * of. A commit starts when COMMIT_FILES wait, when the first has waited
 * COMMIT_WAIT_MS, or when the workers have nothing else to do; one at a
 * time, on a thread of its own (syncfs sleeps, the loop must not), so the
 * next group gathers while one is written. At most COMMIT_MAX_WAITING
 * files wait: then no more are taken until a commit ends.
 */
#define COMMIT_FILES 128
#define COMMIT_WAIT_MS 20
#define COMMIT_MAX_WAITING 1024

/*
 * A committed group's sources are disposed of by threads of their own,
 * several at once, not by the committer: the next commit need not wait
 * for them, and each may wait for the disk - on ext4 mounted with discard
 * and no journal, the close that frees an unlinked source's blocks waits
 * for the device's discard, about a millisecond per file, which one
 * thread doing 2,000 files in a row made the burst's bottleneck. They
 * wait rather than compute, so their number is not tied to the cores.
 */
#define DISPOSERS 4

/* What a worker decided about one file. */
enum outcome {
	OUTCOME_STORED,
	OUTCOME_DUPLICATE,
	OUTCOME_RETRY_INPUT,	/* unreadable: maybe still in transfer */
	OUTCOME_RETRY_OUTPUT,	/* our side failed: keep source, back off */
	OUTCOME_QUARANTINED,
	OUTCOME_HELD,		/* parked until the table knows its PatientID */
	OUTCOME_VANISHED,	/* gone before we got to it */
	OUTCOME_DISPOSED,	/* a stored file's source, removed on a retry */
	OUTCOME_DISPOSE_RETRY,	/* a stored file's source that still stays */
};

struct daemon;

/* Buckets of the in-flight set: with files waiting for a group commit,
 * a thousand may be in flight, and every arrival looks itself up. */
#define FLY_BUCKETS 1024

/* A source whose output is stored but which could not be removed (or
 * moved to processed): retried as disposal only - never stored again. */
struct disposal {
	struct disposal *next;
	char *path;
	struct stat read_st;	/* the file that was read */
	char dest[PATH_MAX + NAME_MAX + 2];
	char sop_instance_uid[65], source_sha256[65], owner[96];
	/* Its source vanished from path (watch time, 0: still owed there):
	 * kept a while, by inode, for the sender's rename - the file turns
	 * up under its new name once that has settled (see submit()). */
	int64_t lost_ms;
};

struct job {
	struct daemon *d;
	char *path;		/* absolute; the watch's key */
	const char *rel;	/* inside path, relative to the input root */
	char logged_source[64];	/* what the audit may say about the source */
	unsigned attempt;	/* 1 for the first try */
	enum outcome outcome;
	struct pipeline_result result;
	char quarantined_as[PATH_MAX];	/* or held as */
	char table_sha256[17];	/* of the table in force at dispatch */
	unsigned long table_gen;	/* d->table_gen at dispatch */
	char owner[96];		/* "uid(name)" of the source */
	char marker[64];	/* its pending `stored` record */
	bool stored_logged;
	struct job *commit_next;	/* waiting for, or in, a group commit */
	bool unqueued;		/* stored, but not queued for forwarding */
	bool input_side;	/* a retry whose cause is the input folder */
	bool dispose_only;	/* from a struct disposal */
	struct stat read_st;
	struct stat judged_st;	/* at dispatch (st_ino 0: not a file) */
	/* Loop thread only: the in-flight set, keyed by the inode the path
	 * named at dispatch. A sender renaming the file meanwhile gives
	 * moved_to (its newest name), which the job's result then follows:
	 * one inode, one output, one record. */
	struct job *fly_prev, *fly_next;
	dev_t dev;
	ino_t ino;
	char *moved_to;
};

/* A stored file whose forwarding entries could not be made (ENOSPC...):
 * retried from the loop's timer; its pending marker stays until then, so
 * a restart queues it too (records.h, outbox.h). */
struct unqueued {
	struct unqueued *next;
	char dest[PATH_MAX + NAME_MAX + 2];
	char marker[64];
};

struct counters {
	unsigned long stored, duplicates, quarantined, held, retries;
};

/* fill_owner()'s last answer; shared by the workers. */
#define OWNER_CACHE_MS 5000
struct owner_cache {
	pthread_mutex_t lock;
	bool valid;
	uid_t uid;
	int64_t when_ms;
	char owner[96];
};

/* One group commit: its files, and whether their outputs are durable. */
struct commit {
	struct job *jobs;		/* linked by commit_next */
	int rc;				/* of pipeline_commit() */
	struct error err;
};

struct daemon {
	const struct config *cfg;
	struct pipeline *pipeline;
	struct watch *watch;
	struct workers *workers;
	struct deid_secret *secret;
	struct records *records;
	struct studies *studies;	/* NULL: study_idle_s off */
	struct forward *forward;	/* NULL without destinations */
	struct disposal *disposals;	/* loop thread only */
	struct unqueued *unqueued;	/* loop thread only */
	/* Loop thread only: jobs submitted, by inode (FLY_BUCKETS). */
	struct job *flying[FLY_BUCKETS];
	char table_sha256[17];	/* short SHA-256 of the table file */
	long delay_published_ms;	/* DICOMSORT_TEST_DELAY=published:MS */
	long delay_held_ms;		/* DICOMSORT_TEST_DELAY=held:MS */
	long delay_scan_entry_ms;	/* DICOMSORT_TEST_DELAY=scan-entry:MS */
	long delay_release_ms;		/* DICOMSORT_TEST_DELAY=release-entry:MS */
	long delay_parsed_ms;		/* DICOMSORT_TEST_DELAY=parsed:MS */
	long delay_durable_ms;		/* DICOMSORT_TEST_DELAY=durable:MS */
	long delay_commit_ms;		/* DICOMSORT_TEST_DELAY=commit:MS */
	long delay_claimed_ms;		/* DICOMSORT_TEST_DELAY=claimed:MS */
	long fail_commits;		/* DICOMSORT_TEST_DELAY=commit-fails:N
					   (committer thread only) */
	struct workers *committer;	/* one thread: the group commits */
	struct workers *disposers;	/* DISPOSERS threads: then sources */
	struct owner_cache owner_cache;
	bool committer_stopped, disposers_stopped;
	struct job *waiting, **waiting_tail;	/* loop thread: published,
						   not committed */
	size_t nwaiting;
	int64_t waiting_since_ms;	/* when the first of them came */
	size_t ncommitting;		/* files in the commit under way */
	size_t ndisposing;		/* committed, sources not yet gone */
	unsigned long table_gen;	/* loop thread: bumped by each reload */
	int quarantine_fd;
	int hold_fd;		/* -1 unless the hold policy is on */
	struct pollfd fds[SLOT_COUNT];
	struct counters count;
	struct metrics metrics;	/* counters copied in before each write */
	int metrics_failing;	/* errno of the last failed write, or 0 */
	int64_t next_metrics_ms, next_purge_ms;
	char last_error[PATH_MAX + ERROR_MSG_MAX + 8];
	bool output_trouble;	/* an output error is being retried */
	bool input_trouble;	/* a source could not be removed */
	bool stopping;
	bool rewatch_needed;
	bool started;		/* READY=1 sent: the backlog walk is done */
	bool scan_logged;	/* the end of the walk under way was told */
	const char *scan_why;	/* what started it: "backlog", "rescan" */
	long scan_found;	/* files the walk under way found so far */
	size_t unwatched;	/* folders beyond inotify, as last told */
	bool cleanup_due;	/* files were finished since the last cleanup */
	int64_t next_watchdog_ms, next_rescan_ms, next_cleanup_ms;
	int64_t next_unwatched_ms;	/* rescan for folders beyond inotify */
	int64_t next_status_ms;	/* forwarding: queues change on their own */
	int64_t watchdog_ms;
	int64_t armed_at;		/* the timerfd's instant, -1 off */
	size_t max_outstanding;
};

static void job_free(void *p)
{
	struct job *job = p;

	if (job != NULL) {
		free(job->path);
		free(job->moved_to);
	}
	free(job);
}

/* ---- on a worker thread ---- */

static bool vanished(const struct job *job)
{
	struct stat st;

	return lstat(job->path, &st) == -1 && errno == ENOENT;
}

/* "user:group" of uid/gid, by name where they have one. */
static void owner_names(uid_t uid, gid_t gid, char *out, size_t len)
{
	char buf[1024], user[64], group[64];
	struct passwd pw, *pwp = NULL;
	struct group gr, *grp = NULL;

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &pwp) == 0 && pwp != NULL)
		snprintf(user, sizeof(user), "%s", pw.pw_name);
	else
		snprintf(user, sizeof(user), "%u", (unsigned)uid);
	if (getgrgid_r(gid, &gr, buf, sizeof(buf), &grp) == 0 && grp != NULL)
		snprintf(group, sizeof(group), "%s", gr.gr_name);
	else
		snprintf(group, sizeof(group), "%u", (unsigned)gid);
	snprintf(out, len, "%s:%s", user, group);
}

/*
 * A source we may read but not rename or remove is an input-side problem
 * (issue 10): the folder it lies in does not let us write. The error then
 * names that folder, its mode and owner, and the likely cause - a sender
 * writing with umask 022 makes folders without group write. When
 * de-identifying, a folder below the input root may carry a patient's
 * name: the input root is named instead.
 */
static bool explain_input_side(const struct daemon *d, const struct job *job,
			       struct error *err)
{
	char dir[PATH_MAX], where[PATH_MAX + 32], owner[160];
	char msg[PATH_MAX + 2 * ERROR_MSG_MAX];
	size_t len;
	char *slash;
	struct stat st;

	if (err->errnum != EACCES && err->errnum != EPERM)
		return false;
	snprintf(dir, sizeof(dir), "%s", job->path);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		return false;
	*slash = '\0';
	if (faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) == 0 ||
	    stat(dir, &st) == -1)
		return false;	/* not the source's folder that refuses */
	owner_names(st.st_uid, st.st_gid, owner, sizeof(owner));
	if (d->cfg->profile != DEID_NONE && strcmp(dir, d->cfg->input) != 0)
		snprintf(where, sizeof(where), "a folder below %s", d->cfg->input);
	else
		snprintf(where, sizeof(where), "%s", dir);
	snprintf(msg, sizeof(msg), "input side: %s (mode %04o, owner %s) does "
		 "not let dicomsortd (uid %u) rename or remove files in it; "
		 "likely cause: the writer's umask (e.g. 022) left it without "
		 "group write (%s)", where, (unsigned)(st.st_mode & 07777),
		 owner, (unsigned)geteuid(), err->msg);
	len = strlen(msg) < sizeof(err->msg) ? strlen(msg) : sizeof(err->msg) - 1;
	memcpy(err->msg, msg, len);
	err->msg[len] = '\0';
	return true;
}

/* The sending account: the source's owner, by number and name. The
 * name of the last uid is kept a few seconds: a look-up reads the whole
 * of /etc/passwd (five system calls), and a burst comes from one sender. */
static void fill_owner(struct job *job)
{
	const struct stat *st = &job->result.source_st;
	struct owner_cache *c = &job->d->owner_cache;
	int64_t now = watch_now_ms();
	char buf[1024];
	struct passwd pw, *pwp = NULL;

	if (job->owner[0] != '\0' || st->st_ino == 0)
		return;
	pthread_mutex_lock(&c->lock);
	if (c->valid && c->uid == st->st_uid && now - c->when_ms < OWNER_CACHE_MS) {
		memcpy(job->owner, c->owner, sizeof(job->owner));
		pthread_mutex_unlock(&c->lock);
		return;
	}
	pthread_mutex_unlock(&c->lock);
	if (getpwuid_r(st->st_uid, &pw, buf, sizeof(buf), &pwp) == 0 &&
	    pwp != NULL)
		snprintf(job->owner, sizeof(job->owner), "%u(%.64s)",
			 (unsigned)st->st_uid, pw.pw_name);
	else
		snprintf(job->owner, sizeof(job->owner), "%u",
			 (unsigned)st->st_uid);
	pthread_mutex_lock(&c->lock);
	c->valid = true;
	c->uid = st->st_uid;
	c->when_ms = now;
	memcpy(c->owner, job->owner, sizeof(c->owner));
	pthread_mutex_unlock(&c->lock);
}

static const char *nonempty(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

/* A per-file audit record with the fields an auditor asks for. */
static struct audit_record file_record(const struct job *job, const char *event,
				       int priority, const char *dest,
				       const char *reason)
{
	struct audit_record rec = {
		.event = event,
		.priority = priority,
		.source = job->logged_source[0] ? job->logged_source : job->rel,
		.dest = dest,
		.sop_instance_uid = nonempty(job->result.sop_instance_uid),
		/* A stored file's warning (its meta header kept as it came
		 * although it disagrees with the dataset) is its reason. */
		.reason = reason != NULL || strcmp(event, "stored") != 0 ?
			  reason : job->result.warning,
		.profile = deid_profile_name(job->d->cfg->profile),
		.table_sha256 = nonempty(job->table_sha256),
		.source_sha256 = nonempty(job->result.source_sha256),
		.source_owner = nonempty(job->owner),
	};

	return rec;
}

/* Before an output may appear: note its `stored` record, owed from the
 * instant the file is there (see records.h). */
static int before_publish(void *ctx, const struct pipeline_result *res,
			  const struct stat *out_st, struct error *err)
{
	struct job *job = ctx;
	struct audit_record rec;

	fill_owner(job);
	rec = file_record(job, "stored", LOG_INFO, res->dest, NULL);
	return records_note(job->d->records, job->marker, sizeof(job->marker),
			    &rec, out_st, err);
}

/* false: not queued; the marker stays (the loop retries, and a restart
 * queues it). */
static bool queue_forward(struct job *job, const struct pipeline_result *res)
{
	struct error err = ERROR_INIT;

	if (forward_queue(job->d->forward, res->dest, &err) == 0)
		return true;
	log_msg(LOG_ERR, "%s: cannot queue for forwarding (retried): %s",
		res->dest, err.msg);
	return false;
}

/* In its study's state (durable) before the `stored` record: a kill
 * after the record finds it there; one before it, through the marker. */
static void note_study(struct job *job, const struct pipeline_result *res)
{
	struct error err = ERROR_INIT;

	if (studies_note(job->d->studies, res, &err) == -1)
		log_msg(LOG_ERR, "%s: not noted for its study's manifest: %s",
			res->dest, err.msg);
}

/* The output is durable: the audit says so now, whatever happens to the
 * source afterwards; then the marker goes. (A kill in the microseconds
 * between the two would send the record again at start; the marker
 * closes the far wider window between publication and record.) */
static void log_stored(struct job *job)
{
	struct audit_record rec = file_record(job, "stored", LOG_INFO,
					      job->result.dest, NULL);

	log_audit(&rec);
	job->stored_logged = true;
	if (!job->unqueued)
		records_done(job->d->records, job->marker);
}

/* Published. Unless it waits for a group commit (res->dispose_pending),
 * it is durable now: the `stored` record goes out. */
static void after_publish(void *ctx, const struct pipeline_result *res,
			  bool published)
{
	struct job *job = ctx;

	if (published) {
		if (job->d->delay_published_ms > 0) {
			struct timespec ts = {
				job->d->delay_published_ms / 1000,
				(job->d->delay_published_ms % 1000) * 1000000,
			};

			nanosleep(&ts, NULL);
		}
		/* Queued for forwarding (durable) before the source may go
		 * and before the marker does: a kill until then leaves the
		 * marker, whose recovery queues it (outbox.h). */
		if (job->d->forward != NULL && !queue_forward(job, res))
			job->unqueued = true;
		note_study(job, res);
		/* Not durable yet: the record and the marker's removal wait
		 * for the commit (commit_run()); a kill until then leaves the
		 * marker, whose record goes out at the next start. */
		if (res->dispose_pending)
			return;
		log_stored(job);	/* res is job->result */
		return;
	}
	if (!job->unqueued)
		records_done(job->d->records, job->marker);
}

static void test_sleep(long ms, const char *where)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	log_msg(LOG_INFO, "test delay: %ld ms %s", ms, where);
	nanosleep(&ts, NULL);
}

/* Test-only windows (DICOMSORT_TEST_DELAY) at the pipeline's points. */
static void checkpoint(void *ctx, enum pipeline_point point)
{
	struct job *job = ctx;

	if (point == PIPELINE_AT_PARSED && job->d->delay_parsed_ms > 0)
		test_sleep(job->d->delay_parsed_ms, "after parsing");
	if (point == PIPELINE_AT_DURABLE && job->d->delay_durable_ms > 0)
		test_sleep(job->d->delay_durable_ms,
			   "after the output is durable");
	if (point == PIPELINE_AT_CLAIMED && job->d->delay_claimed_ms > 0)
		test_sleep(job->d->delay_claimed_ms,
			   "with the source claimed, before its rename");
}

static void quarantine_job(struct daemon *d, struct job *job, const char *rule)
{
	struct quarantine_entry entry = {
		.source_path = job->path,
		.source_rel = job->rel,
		.reason = job->result.err.msg,
		.rule = rule,
		.attempts = job->attempt,
		.st = &job->result.source_st,
		.sha256 = job->result.source_sha256,
		.owner = job->owner,
	};
	struct error err = ERROR_INIT;

	if (quarantine_file(d->quarantine_fd, &entry, job->quarantined_as,
			    sizeof(job->quarantined_as), &err) == 0) {
		job->outcome = OUTCOME_QUARANTINED;
		return;
	}
	job->input_side = explain_input_side(d, job, &err);
	job->result.err = err;
	job->outcome = OUTCOME_RETRY_OUTPUT;
}

static void hold_job(struct daemon *d, struct job *job)
{
	struct error err = ERROR_INIT;

	if (d->delay_held_ms > 0) {
		struct timespec ts = {
			d->delay_held_ms / 1000,
			(d->delay_held_ms % 1000) * 1000000,
		};

		log_msg(LOG_INFO, "test delay: %ld ms before a hold",
			d->delay_held_ms);
		nanosleep(&ts, NULL);
	}
	if (hold_file(d->hold_fd, job->path, job->rel, job->quarantined_as,
		      sizeof(job->quarantined_as), &err) == 0) {
		job->outcome = OUTCOME_HELD;
		return;
	}
	job->input_side = explain_input_side(d, job, &err);
	job->result.err = err;
	job->outcome = vanished(job) ? OUTCOME_VANISHED : OUTCOME_RETRY_OUTPUT;
}

static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
	       a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/*
 * A stored file's source, once more: only its disposal is retried, so
 * it is never stored (or called a duplicate) again. A different file
 * under the name meanwhile is a new delivery: 1, process it as such.
 */
static int dispose_job(struct daemon *d, struct job *job)
{
	struct pipeline_result *res = &job->result;
	struct pipeline_read read = { .st = job->read_st };
	bool changed = false;
	struct stat st;

	if (lstat(job->path, &st) == -1) {
		job->outcome = OUTCOME_VANISHED;
		return 0;
	}
	if (!same_file(&st, &job->read_st))
		return 1;
	res->source_st = job->read_st;
	memcpy(read.sha256, res->source_sha256, sizeof(read.sha256));
	if (pipeline_dispose(d->pipeline, job->path, job->rel, &read,
			     res->disposed_as, sizeof(res->disposed_as),
			     &changed, &res->dispose_err) == 0) {
		job->outcome = OUTCOME_DISPOSED;
		return 0;
	}
	if (changed)
		return 1;	/* another version now: a delivery of its own */
	explain_input_side(d, job, &res->dispose_err);
	res->dispose_failed = true;
	job->outcome = vanished(job) ? OUTCOME_VANISHED : OUTCOME_DISPOSE_RETRY;
	return 0;
}

static void run_job(void *ctx, void *p)
{
	struct daemon *d = ctx;
	struct job *job = p;
	struct pipeline_hooks hooks = { before_publish, after_publish,
					checkpoint, job, NULL,
					job->judged_st.st_ino != 0 ?
					&job->judged_st : NULL };

	if (job->dispose_only && dispose_job(d, job) == 0)
		return;
	job->dispose_only = false;
	job->owner[0] = '\0';
	pipeline_file_hooked(d->pipeline, job->path, job->rel, &hooks,
			     &job->result);
	fill_owner(job);
	if (job->result.dispose_failed)
		explain_input_side(d, job, &job->result.dispose_err);
	switch (job->result.status) {
	case PIPELINE_STORED:
		job->outcome = OUTCOME_STORED;
		break;
	case PIPELINE_DUPLICATE:
		job->outcome = OUTCOME_DUPLICATE;
		break;
	case PIPELINE_HELD:
		hold_job(d, job);
		break;
	case PIPELINE_FAILED:
		/* A writer had it open or wrote it meanwhile: not finished,
		 * taken again once settled - nobody's failure. */
		job->outcome = vanished(job) ? OUTCOME_VANISHED :
			       job->result.source_busy ? OUTCOME_RETRY_INPUT :
			       OUTCOME_RETRY_OUTPUT;
		break;
	case PIPELINE_REJECTED:
		/* A policy rejection (burned-in annotation...) of a file
		 * that parsed is final: retrying cannot change it. */
		if (vanished(job))
			job->outcome = OUTCOME_VANISHED;
		else if (job->result.policy_rejected)
			quarantine_job(d, job, "de-identification policy");
		else if (job->attempt < (unsigned)d->cfg->retry.parse_attempts)
			job->outcome = OUTCOME_RETRY_INPUT;
		else
			quarantine_job(d, job, "input rejected");
		break;
	}
}

/* ---- on the committer thread ---- */

/*
 * One file of a group commit that failed: its output may not be on disk,
 * so its source stays. A published output is there all the same, and
 * records match files: its `stored` record goes out (as when a folder's
 * fsync fails after publication, SYNC_EACH). The file is taken again
 * after a backoff; that run finds the identical output, waits for the
 * next commit as a duplicate, and only then lets the source go.
 */
static void commit_failed(struct job *job, const struct error *err)
{
	if (job->outcome == OUTCOME_STORED)
		log_stored(job);
	job->result.dispose_pending = false;
	/* A source renamed into place is the output: no second copy is
	 * left to keep or to take again, it is stored as it is. */
	if (job->result.renamed)
		return;
	job->result.status = PIPELINE_FAILED;
	job->result.err = *err;
	job->outcome = OUTCOME_RETRY_OUTPUT;
}

/* One syncfs for the group, then each file's record, as run() would
 * have sent it under SYNC_EACH; the sources go afterwards (dispose_run()).
 * DICOMSORT_TEST_DELAY=commit:MS holds the group before the syncfs. */
static void commit_run(void *ctx, void *p)
{
	struct daemon *d = ctx;
	struct commit *c = p;

	if (d->delay_commit_ms > 0)
		test_sleep(d->delay_commit_ms, "before a group commit");
	if (d->fail_commits > 0) {
		d->fail_commits--;
		c->rc = error_set(&c->err, ERROR_TRANSIENT, EIO, "syncfs of the "
				  "output file system (group commit): test "
				  "failure");
	} else {
		c->rc = pipeline_commit(d->pipeline, &c->err);
	}
	/* Each record is owed from now, not after any file's disposal. */
	for (struct job *job = c->jobs; job != NULL; job = job->commit_next)
		if (c->rc == -1)
			commit_failed(job, &c->err);
		else if (job->outcome == OUTCOME_STORED)
			log_stored(job);
}

/* ---- on a disposer thread ---- */

/* A committed file's source, as run() would have disposed of it under
 * SYNC_EACH: only if it is still the version read. */
static void dispose_run(void *ctx, void *p)
{
	struct daemon *d = ctx;
	struct job *job = p;

	checkpoint(job, PIPELINE_AT_DURABLE);
	pipeline_dispose_result(d->pipeline, job->path, job->rel, &job->result);
	if (job->result.dispose_failed)
		explain_input_side(d, job, &job->result.dispose_err);
}

/* ---- back on the loop thread ---- */

/* "; 12 folders not watched (...)" while some are beyond inotify. */
static void unwatched_text(const struct daemon *d, char *buf, size_t len)
{
	int e = 0;
	size_t n = d->watch != NULL ? watch_unwatched(d->watch, &e) : 0;

	buf[0] = '\0';
	if (n > 0)
		snprintf(buf, len, "; degraded: %zu folders not watched (%s), "
			 "rescanned every %ld s", n, e == ENOSPC ?
			 "inotify watch limit fs.inotify.max_user_watches "
			 "reached" : strerror(e), d->cfg->watch.unwatched_rescan_s);
}

static void status_text(const struct daemon *d, char *buf, size_t len)
{
	char degraded[256];

	unwatched_text(d, degraded, sizeof(degraded));
	char fwd[512];

	forward_status(d->forward, fwd, sizeof(fwd));
	snprintf(buf, len, "stored %lu, duplicates %lu, quarantined %lu, "
		 "held %lu, queued %zu, retries %lu%s%s%s%s%s%s%s%s",
		 d->count.stored,
		 d->count.duplicates, d->count.quarantined, d->count.held,
		 watch_pending_count(d->watch) + workers_outstanding(d->workers) +
		 d->nwaiting + d->ncommitting + d->ndisposing,
		 d->count.retries, degraded,
		 d->watch != NULL && watch_scanning(d->watch) ?
		 "; scanning the input folder" : "",
		 d->output_trouble ? "; output problem, retrying" : "",
		 d->input_trouble ? "; input problem: sources cannot be "
		 "removed or moved, retrying" : "",
		 fwd[0] ? "; " : "", fwd,
		 d->last_error[0] ? "; last error: " : "", d->last_error);
}

static void update_status(const struct daemon *d)
{
	char status[sizeof(d->last_error) + 1024];

	status_text(d, status, sizeof(status));
	notify_status(status);
}

static long backoff_ms(const struct config *cfg, unsigned attempt)
{
	long delay = cfg->retry.backoff_ms;

	for (unsigned i = 1; i < attempt && delay < cfg->retry.backoff_max_ms; i++)
		delay *= 2;
	return delay < cfg->retry.backoff_max_ms ? delay : cfg->retry.backoff_max_ms;
}

static void audit_job(const struct job *job, const char *event, int priority,
		      const char *dest, const char *reason)
{
	struct audit_record rec = file_record(job, event, priority, dest, reason);

	log_audit(&rec);
}

/*
 * Error texts from the correlation table quote the IDs of the offending
 * lines ("ID 'X' already mapped to 'Y'"): original patient IDs. When
 * de-identifying, what is quoted is withheld; file and line remain.
 */
static void redact_quoted(const struct config *cfg, char *msg)
{
	char out[ERROR_MSG_MAX];
	size_t o = 0;
	bool inside = false;

	if (cfg->profile == DEID_NONE || strchr(msg, '\'') == NULL)
		return;
	for (const char *p = msg; *p != '\0' && o + 1 < sizeof(out); p++) {
		if (*p == '\'') {
			if (inside) {
				static const char held[] = "(withheld)";
				size_t n = sizeof(held) - 1;

				if (o + n + 2 >= sizeof(out))
					break;
				memcpy(out + o, held, n);
				o += n;
			}
			inside = !inside;
			out[o++] = '\'';
		} else if (!inside) {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
	snprintf(msg, ERROR_MSG_MAX, "%s", out);
}

static void remember_error(struct daemon *d, const struct job *job,
			   const struct error *err)
{
	snprintf(d->last_error, sizeof(d->last_error), "%s: %s",
		 job->logged_source[0] ? job->logged_source : job->rel,
		 err->msg);
	metrics_error(&d->metrics, d->last_error, time(NULL));
}

static struct disposal **find_disposal(struct daemon *d, const char *path)
{
	struct disposal **p = &d->disposals;

	while (*p != NULL && strcmp((*p)->path, path) != 0)
		p = &(*p)->next;
	return p;
}

/* Some source whose output is stored still waits to be removed. */
static bool disposals_owed(const struct daemon *d)
{
	for (const struct disposal *p = d->disposals; p != NULL; p = p->next)
		if (p->lost_ms == 0)
			return true;
	return false;
}

static void unlink_disposal(struct daemon *d, struct disposal **p)
{
	struct disposal *gone = *p;

	*p = gone->next;
	free(gone->path);
	free(gone);
	d->input_trouble = disposals_owed(d);
}

static void forget_disposal(struct daemon *d, const char *path)
{
	struct disposal **p = find_disposal(d, path);

	if (*p != NULL)
		unlink_disposal(d, p);
}

/* How long a lost source's disposal waits for its new name: its rename
 * is seen as a new file, taken once settled. */
static int64_t lost_grace_ms(const struct daemon *d)
{
	return 4 * (int64_t)d->cfg->settle_ms + 30000;
}

/* The source vanished from its name: keep what is owed, by inode. */
static void lose_disposal(struct daemon *d, const char *path)
{
	struct disposal *p = *find_disposal(d, path);

	if (p == NULL)
		return;
	p->lost_ms = watch_now_ms();
	d->input_trouble = disposals_owed(d);
}

/*
 * A new name for the inode of a lost disposal (same inode, size and
 * mtime): the sender renamed the stored file's source before we could
 * remove it. The disposal moves to the new name (its job is then a
 * disposal only, checked by fsutil's claim like any other); lost ones
 * past their grace are forgotten here.
 */
static bool same_file_as_read(const struct disposal *e, const struct stat *st)
{
	return e->read_st.st_dev == st->st_dev &&
	       e->read_st.st_ino == st->st_ino &&
	       e->read_st.st_size == st->st_size &&
	       e->read_st.st_mtim.tv_sec == st->st_mtim.tv_sec &&
	       e->read_st.st_mtim.tv_nsec == st->st_mtim.tv_nsec;
}

/* Lost, or gone from its name without our knowing yet: a rename seen
 * after the job ended, while its disposal waits for its backoff (the
 * retry under the old name would only then find it vanished). The old
 * name still naming the inode is a hard link, a file of its own. */
static bool lost_as(const struct disposal *e, const struct stat *st)
{
	struct stat old;

	if (!same_file_as_read(e, st))
		return false;
	if (e->lost_ms != 0)
		return true;
	if (lstat(e->path, &old) == 0)
		return old.st_ino != st->st_ino || old.st_dev != st->st_dev;
	return errno == ENOENT;
}

static void find_lost_disposal(struct daemon *d, const struct stat *st,
			       const char *path)
{
	int64_t now = watch_now_ms();
	struct disposal **p = &d->disposals, *found = NULL;
	char *copy;

	while (*p != NULL) {
		if ((*p)->lost_ms != 0 && now - (*p)->lost_ms > lost_grace_ms(d)) {
			unlink_disposal(d, p);
			continue;
		}
		if (found == NULL && lost_as(*p, st))
			found = *p;
		p = &(*p)->next;
	}
	if (found == NULL || (copy = strdup(path)) == NULL)
		return;
	free(found->path);
	found->path = copy;
	found->lost_ms = 0;
	/* Another entry under this name is stale now: the first wins. */
	for (p = &d->disposals; *p != NULL; p = &(*p)->next)
		if (*p != found && strcmp((*p)->path, path) == 0) {
			unlink_disposal(d, p);
			break;
		}
	d->input_trouble = true;
}

static void log_disposed(const struct daemon *d, const struct job *job)
{
	struct audit_record rec = file_record(job, "disposed", LOG_INFO,
					      job->result.dest, NULL);
	char where[PATH_MAX * 2 + 16];

	/* The processed path repeats the source's: withheld when
	 * de-identifying, like the source's name. */
	if (job->result.renamed)
		fsutil_copy_str(where, sizeof(where), "moved into the output");
	else if (d->cfg->after_success == AFTER_SUCCESS_MOVE)
		snprintf(where, sizeof(where), "moved to %s%s%s",
			 d->cfg->processed, job->logged_source[0] ? "" : "/",
			 job->logged_source[0] ? "" : job->result.disposed_as);
	else
		fsutil_copy_str(where, sizeof(where), "deleted");
	rec.disposal = where;
	log_audit(&rec);
}

/* What became of the source of a stored (or duplicate) file: a fact of
 * its own, with its own record; a failure is retried as disposal only. */
static void report_disposal(struct daemon *d, struct job *job)
{
	const struct pipeline_result *res = &job->result;
	struct disposal **p;

	if (!res->dispose_failed) {
		log_disposed(d, job);
		forget_disposal(d, job->path);
		watch_done(d->watch, job->path);
		return;
	}
	if (res->source_changed) {
		/* Not the version stored: it stays and is processed again
		 * as a delivery of its own once it has settled. */
		forget_disposal(d, job->path);
		audit_job(job, "changed", LOG_NOTICE, res->dest,
			  "source changed after it was read; kept, to be "
			  "processed again");
		watch_retry(d->watch, job->path, d->cfg->settle_ms);
		return;
	}
	d->input_trouble = true;
	remember_error(d, job, &res->dispose_err);
	audit_job(job, "dispose-failed", LOG_ERR, res->dest, res->dispose_err.msg);
	p = find_disposal(d, job->path);
	if (*p == NULL) {
		*p = calloc(1, sizeof(**p));
		if (*p == NULL || ((*p)->path = strdup(job->path)) == NULL)
			abort();
	}
	(*p)->read_st = res->source_st;
	snprintf((*p)->dest, sizeof((*p)->dest), "%s", res->dest);
	snprintf((*p)->sop_instance_uid, sizeof((*p)->sop_instance_uid), "%s",
		 res->sop_instance_uid);
	snprintf((*p)->source_sha256, sizeof((*p)->source_sha256), "%s",
		 res->source_sha256);
	snprintf((*p)->owner, sizeof((*p)->owner), "%s", job->owner);
	watch_retry(d->watch, job->path, backoff_ms(d->cfg, job->attempt));
}

static void release_held(struct daemon *d);

/* Arrival is the source's ctime as read: its last write, or its move
 * into the input folder (a requeue, a release from hold). */
static void note_stored(struct daemon *d, const struct job *job)
{
	const struct stat *st = &job->result.source_st;
	struct timespec now;
	double latency = 0;

	clock_gettime(CLOCK_REALTIME, &now);
	if (st->st_ino != 0)
		latency = (double)(now.tv_sec - st->st_ctim.tv_sec) +
			  (double)(now.tv_nsec - st->st_ctim.tv_nsec) / 1e9;
	metrics_stored(&d->metrics, st->st_ino != 0 ?
		       (unsigned long long)st->st_size : 0, latency, now.tv_sec);
}

static void remember_unqueued(struct daemon *d, const struct job *job)
{
	struct unqueued *u = calloc(1, sizeof(*u));

	if (u == NULL)
		abort();
	snprintf(u->dest, sizeof(u->dest), "%s", job->result.dest);
	snprintf(u->marker, sizeof(u->marker), "%s", job->marker);
	u->next = d->unqueued;
	d->unqueued = u;
}

/* On the status tick: queue what could not be queued before. */
static void retry_unqueued(struct daemon *d)
{
	struct unqueued **p = &d->unqueued;

	while (*p != NULL) {
		struct unqueued *u = *p;
		struct error err = ERROR_INIT;

		if (forward_queue(d->forward, u->dest, &err) == -1) {
			p = &u->next;
			continue;
		}
		records_done(d->records, u->marker);
		*p = u->next;
		free(u);
	}
}

static size_t fly_bucket(dev_t dev, ino_t ino)
{
	return (size_t)((ino ^ (ino >> 20) ^ dev) % FLY_BUCKETS);
}

static void land(struct daemon *d, struct job *job)
{
	struct job **head = &d->flying[fly_bucket(job->dev, job->ino)];

	if (job->fly_prev != NULL)
		job->fly_prev->fly_next = job->fly_next;
	else if (*head == job)
		*head = job->fly_next;
	if (job->fly_next != NULL)
		job->fly_next->fly_prev = job->fly_prev;
	job->fly_prev = job->fly_next = NULL;
}

static void set_job_path(struct daemon *d, struct job *job, char *path)
{
	size_t rootlen = strlen(d->cfg->input);

	free(job->path);
	job->path = path;
	job->rel = path;
	if (strncmp(path, d->cfg->input, rootlen) == 0 && path[rootlen] == '/')
		job->rel = path + rootlen + 1;
}

static bool source_left(const struct job *job)
{
	switch (job->outcome) {
	case OUTCOME_STORED:
	case OUTCOME_DUPLICATE:
	case OUTCOME_DISPOSED:
	case OUTCOME_DISPOSE_RETRY:
		return job->result.dispose_failed && !job->result.source_changed;
	case OUTCOME_QUARANTINED:
	case OUTCOME_HELD:
		return false;
	default:
		return true;
	}
}

/*
 * The sender renamed the file while it was in flight: what was decided
 * about the inode (stored, its disposal owed; or a retry) goes to its
 * new name, and the old name is done. Where both names still exist (a
 * hard link) the new one is left to be processed as a file of its own.
 */
static void follow_rename(struct daemon *d, struct job *job)
{
	struct stat st;
	char *to = job->moved_to;

	job->moved_to = NULL;
	/* Only a source we did not take away can have moved: one stored
	 * and disposed of, quarantined or held is gone by our hand, and an
	 * inode number met again is then another file (the number reused). */
	if (!source_left(job) ||
	    lstat(job->path, &st) == 0 || errno != ENOENT) {
		watch_retry(d->watch, to, d->cfg->settle_ms);
		free(to);
		return;
	}
	log_msg(LOG_INFO, "%s was renamed while it was processed; following "
		"it to its new name", job->logged_source[0] ?
		job->logged_source : job->rel);
	/* What is owed to the stored file's source goes with it. */
	if (*find_disposal(d, job->path) != NULL) {
		struct disposal *owed = *find_disposal(d, job->path);
		char *copy = strdup(to);

		if (copy == NULL)
			abort();
		forget_disposal(d, to);	/* a stale one under the new name */
		free(owed->path);
		owed->path = copy;
		owed->lost_ms = 0;
	}
	watch_done(d->watch, job->path);
	set_job_path(d, job, to);
	/* Not found under its old name is no longer a failure of ours. */
	if (job->outcome == OUTCOME_VANISHED) {
		job->outcome = OUTCOME_RETRY_INPUT;
		job->attempt = 0;
	}
}

static void wait_for_commit(struct daemon *d, struct job *job);

static void finish_job(struct daemon *d, struct job *job)
{
	const char *reason = job->result.err.msg;

	/* Published, not yet durable: still in flight (a rename of its
	 * source meanwhile is followed as for any job in flight). */
	if (job->result.dispose_pending) {
		wait_for_commit(d, job);
		return;
	}
	land(d, job);
	if (job->moved_to != NULL)
		follow_rename(d, job);
	if (job->unqueued)
		remember_unqueued(d, job);

	/* A new delivery under the name of a source awaiting disposal:
	 * that source is gone, and so is what we owed it. */
	if (job->outcome != OUTCOME_DISPOSED &&
	    job->outcome != OUTCOME_DISPOSE_RETRY &&
	    job->outcome != OUTCOME_STORED && job->outcome != OUTCOME_DUPLICATE &&
	    job->outcome != OUTCOME_VANISHED)
		forget_disposal(d, job->path);
	switch (job->outcome) {
	case OUTCOME_STORED:
		d->count.stored++;
		note_stored(d, job);
		d->output_trouble = false;
		if (!job->stored_logged)
			audit_job(job, "stored", LOG_INFO, job->result.dest, NULL);
		report_disposal(d, job);
		break;
	case OUTCOME_DUPLICATE:
		d->count.duplicates++;
		d->output_trouble = false;
		audit_job(job, "duplicate", LOG_INFO, job->result.dest,
			  "identical file already stored");
		report_disposal(d, job);
		break;
	case OUTCOME_DISPOSED:
	case OUTCOME_DISPOSE_RETRY:
		if (*find_disposal(d, job->path) != NULL)
			snprintf(job->result.dest, sizeof(job->result.dest), "%s",
				 (*find_disposal(d, job->path))->dest);
		report_disposal(d, job);
		break;
	case OUTCOME_HELD:
		d->count.held++;
		d->input_trouble = disposals_owed(d);
		audit_job(job, "held", LOG_NOTICE,
			  job->logged_source[0] ? NULL : job->quarantined_as,
			  "PatientID not in the correlation table yet; "
			  "retried after the next reload");
		watch_done(d->watch, job->path);
		/* Judged under a table a reload has since replaced: that
		 * reload's release ran before this file reached hold, so
		 * release it now, under the new table. */
		if (job->table_gen != d->table_gen)
			release_held(d);
		break;
	case OUTCOME_VANISHED:
		log_msg(LOG_DEBUG, "%s vanished before it was processed",
			job->logged_source[0] ? job->logged_source : job->rel);
		lose_disposal(d, job->path);
		watch_done(d->watch, job->path);
		break;
	case OUTCOME_QUARANTINED:
		d->count.quarantined++;
		d->input_trouble = disposals_owed(d);
		remember_error(d, job, &job->result.err);
		audit_job(job, "quarantined", LOG_WARNING,
			  job->logged_source[0] ? NULL : job->quarantined_as,
			  reason);
		watch_done(d->watch, job->path);
		break;
	case OUTCOME_RETRY_INPUT:
		d->count.retries++;
		audit_job(job, "retry", LOG_INFO, NULL, reason);
		watch_retry(d->watch, job->path, d->cfg->settle_ms);
		break;
	case OUTCOME_RETRY_OUTPUT:
		d->count.retries++;
		if (job->input_side)
			d->input_trouble = true;
		else
			d->output_trouble = true;
		remember_error(d, job, &job->result.err);
		audit_job(job, "retry", LOG_ERR, NULL, reason);
		watch_retry(d->watch, job->path, backoff_ms(d->cfg, job->attempt));
		break;
	}
	job_free(job);
}

static void collect_done(struct daemon *d)
{
	void *jobs[64];
	size_t n;

	n = workers_take_done(d->workers, jobs, 64);
	for (size_t i = 0; i < n; i++)
		finish_job(d, jobs[i]);
	if (n > 0) {
		update_status(d);
		d->cleanup_due = d->cfg->cleanup.remove_empty_dirs;
	}
}

/* ---- group commit, the loop's side ---- */

static void wait_for_commit(struct daemon *d, struct job *job)
{
	job->commit_next = NULL;
	if (d->waiting == NULL) {
		d->waiting_tail = &d->waiting;
		d->waiting_since_ms = watch_now_ms();
	}
	*d->waiting_tail = job;
	d->waiting_tail = &job->commit_next;
	d->nwaiting++;
}

/* The files waiting, as one group. */
static struct commit *take_waiting(struct daemon *d)
{
	struct commit *c = calloc(1, sizeof(*c));

	if (c == NULL)
		abort();
	c->jobs = d->waiting;
	c->err = (struct error)ERROR_INIT;
	d->ncommitting = d->nwaiting;
	d->waiting = NULL;
	d->waiting_tail = &d->waiting;
	d->nwaiting = 0;
	return c;
}

/* A commit ended: its files' sources go now (the disposers), or, when
 * it failed, each file is retried. */
static void commit_finished(struct daemon *d, struct commit *c)
{
	struct job *job = c->jobs;
	int rc = c->rc;
	bool finished = false;

	if (rc == -1)
		log_msg(LOG_ERR, "group commit of %zu files failed, their "
			"sources are kept and taken again (one renamed into "
			"place is stored as it is): %s", d->ncommitting,
			c->err.msg);
	d->ncommitting = 0;
	while (job != NULL) {
		struct job *next = job->commit_next;

		job->commit_next = NULL;
		if (rc == 0 && !job->result.renamed) {
			d->ndisposing++;
			workers_submit(d->disposers, job);
		} else {
			/* Failed, or renamed into place: nothing to dispose
			 * of (its record went out with the commit). */
			job->result.dispose_pending = false;
			finish_job(d, job);
			finished = true;
		}
		job = next;
	}
	free(c);
	if (finished) {
		update_status(d);
		d->cleanup_due = d->cfg->cleanup.remove_empty_dirs;
	}
}

/* Sources disposed of: their files are done. Returns how many. */
static size_t collect_disposed(struct daemon *d)
{
	void *jobs[64];
	size_t n = workers_take_done(d->disposers, jobs, 64);

	for (size_t i = 0; i < n; i++) {
		d->ndisposing--;
		finish_job(d, jobs[i]);
	}
	if (n > 0) {
		update_status(d);
		d->cleanup_due = d->cfg->cleanup.remove_empty_dirs;
	}
	return n;
}

static void collect_commits(struct daemon *d)
{
	void *done[4];
	size_t n = workers_take_done(d->committer, done, 4);

	for (size_t i = 0; i < n; i++)
		commit_finished(d, done[i]);
}

/* When a group is worth a syncfs: see COMMIT_FILES. */
static int64_t commit_due_ms(const struct daemon *d)
{
	if (d->waiting == NULL || d->ncommitting > 0)
		return -1;
	if (d->nwaiting >= COMMIT_FILES || workers_outstanding(d->workers) == 0)
		return 0;
	return d->waiting_since_ms + COMMIT_WAIT_MS;
}

static void maybe_commit(struct daemon *d, int64_t now)
{
	int64_t due = commit_due_ms(d);

	if (due < 0 || due > now)
		return;
	workers_submit(d->committer, take_waiting(d));
}

/* At a stop: the commit under way ends, what waits is committed here,
 * and every committed file's source goes before the disposers end. */
static int commit_all(struct daemon *d, int64_t deadline)
{
	int rc = workers_stop(d->committer, deadline);

	if (rc == -1)
		return -1;
	d->committer_stopped = true;
	collect_commits(d);
	if (d->waiting != NULL) {
		struct commit *c = take_waiting(d);

		commit_run(d, c);
		commit_finished(d, c);
	}
	if (workers_finish(d->disposers, deadline) == -1)
		return -1;
	d->disposers_stopped = true;
	while (d->ndisposing > 0 && collect_disposed(d) > 0)
		;
	return 0;
}

static void free_commit(void *p)
{
	struct commit *c = p;

	while (c != NULL && c->jobs != NULL) {
		struct job *next = c->jobs->commit_next;

		job_free(c->jobs);
		c->jobs = next;
	}
	free(c);
}

static int64_t earliest(int64_t a, int64_t b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a < b ? a : b;
}

/*
 * Folders emptied by a batch of files go once the batch is done and they
 * are min_age_s old, rather than at the next periodic pass (every 30 s,
 * which stays as the net for folders emptied by others).
 */
static void schedule_cleanup(struct daemon *d, int64_t now)
{
	int64_t at;

	/* Done means disposed of: a file waiting for its commit, or its
	 * source for a disposer, still has its folder. */
	if (!d->cleanup_due || watch_pending_count(d->watch) > 0 ||
	    workers_outstanding(d->workers) > 0 ||
	    d->nwaiting + d->ncommitting + d->ndisposing > 0)
		return;
	d->cleanup_due = false;
	/* mtime has whole seconds: a little past the age makes it. */
	at = now + d->cfg->cleanup.min_age_s * 1000 + 500;
	d->next_cleanup_ms = earliest(d->next_cleanup_ms, at);
}

/*
 * Folder and file names in a drop folder may be a patient's name or ID
 * (PACS exports often are). When de-identifying, the audit names the
 * source by its inode only: enough to find it with `find -inum`, nothing
 * to identify anyone by.
 */
static void redact_source(const struct daemon *d, struct job *job)
{
	struct stat st;

	if (d->cfg->profile == DEID_NONE)
		return;
	if (lstat(job->path, &st) == 0)
		snprintf(job->logged_source, sizeof(job->logged_source),
			 "inode %llu", (unsigned long long)st.st_ino);
	else
		snprintf(job->logged_source, sizeof(job->logged_source),
			 "(name withheld)");
}

static struct job *job_new(struct daemon *d, char *path)
{
	struct job *job = calloc(1, sizeof(*job));
	size_t rootlen = strlen(d->cfg->input);
	struct disposal *pending;

	if (job == NULL)
		abort();
	job->d = d;
	job->path = path;
	fsutil_copy_str(job->table_sha256, sizeof(job->table_sha256),
			d->table_sha256);
	job->table_gen = d->table_gen;
	/* job->marker: "" until before_publish() notes it. */
	pending = *find_disposal(d, path);
	if (pending != NULL) {
		/* The record fields of the stored file, for its disposal's. */
		job->dispose_only = true;
		job->read_st = pending->read_st;
		memcpy(job->result.sop_instance_uid, pending->sop_instance_uid,
		       sizeof(job->result.sop_instance_uid));
		memcpy(job->result.source_sha256, pending->source_sha256,
		       sizeof(job->result.source_sha256));
		memcpy(job->owner, pending->owner, sizeof(job->owner));
	}
	job->rel = path;
	if (strncmp(path, d->cfg->input, rootlen) == 0 && path[rootlen] == '/')
		job->rel = path + rootlen + 1;
	job->attempt = watch_attempts(d->watch, path) + 1;
	redact_source(d, job);
	return job;
}

/* The job in flight for the inode st, under another name. */
static struct job *flying_as(struct daemon *d, const struct stat *st,
			     const char *path)
{
	for (struct job *j = d->flying[fly_bucket(st->st_dev, st->st_ino)];
	     j != NULL; j = j->fly_next)
		if (j->ino == st->st_ino && j->dev == st->st_dev &&
		    strcmp(j->path, path) != 0)
			return j;
	return NULL;
}

/*
 * One path to a worker - unless it names an inode already in flight
 * under another name: the sender renamed it, and the job in flight
 * answers for it (see follow_rename()); the path stays in flight with it.
 */
static void submit(struct daemon *d, char *path)
{
	struct stat st;
	struct job *job, *owner, **head;

	memset(&st, 0, sizeof(st));
	if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && d->disposals != NULL)
		find_lost_disposal(d, &st, path);
	if (S_ISREG(st.st_mode) && (owner = flying_as(d, &st, path)) != NULL) {
		if (owner->moved_to != NULL)
			watch_done(d->watch, owner->moved_to);
		free(owner->moved_to);
		owner->moved_to = path;
		return;
	}
	job = job_new(d, path);
	if (S_ISREG(st.st_mode)) {
		job->dev = st.st_dev;
		job->ino = st.st_ino;
		job->judged_st = st;
	}
	head = &d->flying[fly_bucket(job->dev, job->ino)];
	job->fly_next = *head;
	if (*head != NULL)
		(*head)->fly_prev = job;
	*head = job;
	workers_submit(d->workers, job);
}

/* How many more files the pool may take now: it is kept a few files per
 * thread ahead (the loop then refills it once per few files, when it
 * runs low, not once per file), no more (files left in the watch still
 * get their events: a late write pushes them back; one written after it
 * was queued is caught when opened, see pipeline_hooks.judged), and no
 * more are taken while COMMIT_MAX_WAITING wait for their commit. */
static size_t dispatch_room(const struct daemon *d)
{
	size_t outstanding = workers_outstanding(d->workers);

	if (d->stopping || outstanding >= d->max_outstanding ||
	    d->nwaiting + d->ncommitting + d->ndisposing >= COMMIT_MAX_WAITING)
		return 0;
	return d->max_outstanding - outstanding;
}

static void dispatch(struct daemon *d)
{
	char *paths[64];
	size_t room, n;

	while ((room = dispatch_room(d)) > 0) {
		n = watch_take_ready(d->watch, paths, room < 64 ? room : 64);
		if (n == 0)
			return;
		for (size_t i = 0; i < n; i++)
			submit(d, paths[i]);
	}
}

/* ---- signals ---- */

static int block_signals(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

/*
 * Whether a SIGTERM or SIGINT waits in the signalfd: asked between the
 * steps of work that may be long on the loop's thread (a release of
 * thousands of held files, each moved and synced), which then stops.
 * DICOMSORT_TEST_DELAY=release-entry:MS sleeps here, once per file.
 */
static bool stop_pending(void *ctx)
{
	const struct daemon *d = ctx;
	sigset_t set;

	if (d->delay_release_ms > 0) {
		struct timespec ts = { d->delay_release_ms / 1000,
				       (d->delay_release_ms % 1000) * 1000000 };

		nanosleep(&ts, NULL);
	}
	if (sigpending(&set) == -1)
		return false;
	return sigismember(&set, SIGTERM) == 1 || sigismember(&set, SIGINT) == 1;
}

/* Held files go back into the input folder, where the watch takes them
 * like any new arrival, now under the new table. A stop cuts the release
 * short: the rest stays held until the next reload. */
static void release_held(struct daemon *d)
{
	struct error err = ERROR_INIT;
	char reason[128];
	struct audit_record rec = { .event = "release", .priority = LOG_INFO,
				    .reason = reason };
	long released;

	if (d->cfg->hold == NULL)
		return;
	released = hold_release(d->cfg->hold, d->cfg->input, stop_pending, d,
				&err);
	if (released >= 0 && stop_pending(d))
		log_msg(LOG_NOTICE, "release of held files cut short by a stop "
			"after %ld files: the others stay in %s until the next "
			"reload", released, d->cfg->hold);
	if (released < 0) {
		rec.priority = LOG_ERR;
		rec.reason = err.msg;
		snprintf(d->last_error, sizeof(d->last_error),
			 "releasing held files: %s", err.msg);
	} else {
		snprintf(reason, sizeof(reason),
			 "%ld held files returned to the input folder", released);
	}
	if (released != 0)
		log_audit(&rec);
	/* A release across file systems links a copy into place, and a link
	 * raises no event the watch acts on: look for the files now rather
	 * than at the next periodic rescan. */
	if (released > 0)
		d->rewatch_needed = true;
}

/* The first 16 hex digits of the SHA-256 of the table file: which table
 * was in force, for the audit, without quoting a line of it. */
static void table_digest(const char *path, char *out, size_t len)
{
	unsigned char buf[8192], md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx;
	FILE *f;
	size_t n;

	out[0] = '\0';
	if (path == NULL || (f = fopen(path, "rbe")) == NULL)
		return;
	ctx = EVP_MD_CTX_new();
	if (ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
		while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
			EVP_DigestUpdate(ctx, buf, n);
		if (!ferror(f) && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1)
			for (unsigned i = 0; i < mdlen && 2 * i + 2 < len && i < 8; i++)
				snprintf(out + 2 * i, 3, "%02x", md[i]);
	}
	EVP_MD_CTX_free(ctx);
	fclose(f);
}

/* A new table is parsed completely before it replaces the old one; a
 * broken table leaves the old one in force. */
static void reload(struct daemon *d)
{
	struct error err = ERROR_INIT;
	struct correlation *table;
	char status[sizeof(d->last_error) + 1024];

	/* Before READY (the backlog walk) there is nothing to reload from
	 * systemd's point of view: the table is just replaced. */
	if (d->started)
		notify_reloading();
	if (d->cfg->correlation_table == NULL) {
		log_msg(LOG_INFO, "reload: no correlation table configured");
	} else if (correlation_load(&table, d->cfg->correlation_table, &err) == -1) {
		struct audit_record rec = { .event = "reload", .priority = LOG_ERR,
					    .reason = err.msg };

		redact_quoted(d->cfg, err.msg);
		log_audit(&rec);
		snprintf(d->last_error, sizeof(d->last_error), "reload: %s", err.msg);
	} else {
		char reason[128];
		struct audit_record rec = { .event = "reload", .priority = LOG_INFO,
					    .reason = reason };

		snprintf(reason, sizeof(reason), "correlation table reloaded, "
			 "%zu IDs", correlation_size(table));
		pipeline_set_table(d->pipeline, table);
		correlation_unref(table);
		d->table_gen++;
		table_digest(d->cfg->correlation_table, d->table_sha256,
			     sizeof(d->table_sha256));
		log_audit(&rec);
		release_held(d);
	}
	status_text(d, status, sizeof(status));
	if (d->started)
		notify_ready(status);
	else
		notify_status(status);
}

static void handle_signals(struct daemon *d)
{
	struct signalfd_siginfo si;

	while (read(d->fds[SLOT_SIGNAL].fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGHUP)
			reload(d);
		else
			d->stopping = true;
	}
}

/* ---- metrics and quarantine retention ---- */

/* The quarantine's age limit is in days: once an hour is soon enough. */
#define DAEMON_PURGE_INTERVAL_MS (3600L * 1000)

/* Each destination's outbox, as the forwarder sees it right now. */
static void sample_destinations(struct daemon *d, struct metrics *m)
{
	struct forward_stat st[METRICS_DESTINATIONS_MAX];
	size_t n = forward_stats(d->forward, st, METRICS_DESTINATIONS_MAX);

	m->ndestinations = n < METRICS_DESTINATIONS_MAX ? n :
			   METRICS_DESTINATIONS_MAX;
	for (size_t i = 0; i < m->ndestinations; i++) {
		snprintf(m->destinations[i].name,
			 sizeof(m->destinations[i].name), "%s", st[i].name);
		m->destinations[i].queued = st[i].queued;
		m->destinations[i].oldest_age_s = (double)st[i].oldest_s;
	}
}

static void sample_metrics(struct daemon *d)
{
	int64_t oldest = watch_oldest_ms(d->watch);
	struct metrics *m = &d->metrics;

	m->stored = d->count.stored;
	m->duplicates = d->count.duplicates;
	m->quarantined = d->count.quarantined;
	m->held = d->count.held;
	m->retries = d->count.retries;
	m->queued = watch_pending_count(d->watch) +
		    watch_in_flight_count(d->watch);
	m->oldest_queued_s = oldest < 0 ? 0 : (double)oldest / 1000.0;
	sample_destinations(d, m);
	/* Errors a job did not report (a reload, a release). */
	if (d->last_error[0] != '\0' && (m->nerrors == 0 ||
	    strncmp(m->errors[0].text, d->last_error,
		    sizeof(m->errors[0].text) - 1) != 0))
		metrics_error(m, d->last_error, time(NULL));
}

/*
 * The metrics file may be missing its folder (no node exporter
 * installed) or be outside the unit's ReadWritePaths=: a warning when
 * that starts and a notice when it ends, never a failure to sort files.
 */
static void write_metrics(struct daemon *d)
{
	struct error err = ERROR_INIT;
	time_t now = time(NULL);

	sample_metrics(d);
	/* Outside systemd its folder may well be missing: status says so. */
	if (d->cfg->status_file != NULL &&
	    metrics_write_file(d->cfg->status_file, 0640, metrics_format_state,
			       &d->metrics, now, &err) == -1)
		log_msg(LOG_DEBUG, "status file: %s", err.msg);
	if (d->cfg->metrics_file == NULL)
		return;
	error_clear(&err);
	if (metrics_write_file(d->cfg->metrics_file, 0644,
			       metrics_format_prometheus, &d->metrics, now,
			       &err) == 0) {
		if (d->metrics_failing)
			log_msg(LOG_NOTICE, "metrics: writing %s again",
				d->cfg->metrics_file);
		d->metrics_failing = 0;
	} else if (d->metrics_failing != err.errnum) {
		log_msg(LOG_WARNING, "metrics: cannot write %s (%s); sorting "
			"goes on, tried again every %ld s%s (metrics_file = "
			"\"\" turns metrics off)", d->cfg->metrics_file,
			err.msg, d->cfg->metrics_interval_s,
			err.errnum == EACCES || err.errnum == EROFS ?
			"; its folder must be writable by the daemon's user "
			"(e.g. setfacl -m u:dicomsortd:rwx FOLDER) and, under "
			"systemd, in ReadWritePaths=" : "");
		d->metrics_failing = err.errnum ? err.errnum : -1;
	}
}

static int purge_one(void *ctx, const struct quarantine_item *it,
		     struct error *err)
{
	struct daemon *d = ctx;
	char source[64], reason[128];
	struct audit_record rec = { .event = "purged", .priority = LOG_INFO,
				    .reason = reason };
	time_t limit = time(NULL) - d->cfg->quarantine_max_age_days * 86400;

	if (it->when > limit)
		return 0;
	/* A quarantine path repeats the source's: withheld when
	 * de-identifying, like the source's name. */
	snprintf(source, sizeof(source), "inode %llu",
		 (unsigned long long)it->st.st_ino);
	rec.source = d->cfg->profile == DEID_NONE ? it->rel : source;
	rec.source_sha256 = nonempty(it->sha256);
	snprintf(reason, sizeof(reason), "quarantined more than %ld days "
		 "ago (quarantine.max_age_days)", d->cfg->quarantine_max_age_days);
	if (quarantine_purge(it, err) == -1) {
		rec.priority = LOG_ERR;
		rec.event = "purge-failed";
		rec.reason = err->msg;
		error_clear(err);
	}
	log_audit(&rec);
	return 0;
}

/* Quarantine holds PHI: nothing stays longer than max_age_days. */
static void purge_quarantine(struct daemon *d)
{
	struct error err = ERROR_INIT;
	int lock = quarantine_lock(d->cfg->quarantine, false, &err);

	if (lock == -1) {
		log_msg(LOG_INFO, "quarantine purge postponed: %s", err.msg);
		return;
	}
	if (quarantine_walk(d->cfg->quarantine, purge_one, d, &err) < 0)
		log_msg(LOG_ERR, "quarantine purge: %s", err.msg);
	close(lock);
	/* What forwarding peers refused is kept as long, no longer. */
	forward_purge_rejected(d->forward, d->cfg->quarantine_max_age_days);
}

/* ---- timers ---- */

/* armed_at when the timer must be set whatever the instant. */
#define TIMER_UNARMED INT64_MIN

/* How often STATUS shows the forwarding queues, which drain on their own. */
#define FORWARD_STATUS_MS 2000

static void arm_timer(struct daemon *d, int64_t now)
{
	/* With no room, a settled file waits for a finished one, whose
	 * eventfd wakes the loop: a timer for it would fire every
	 * millisecond of a burst for nothing. */
	int64_t ready = dispatch_room(d) > 0 ? watch_next_ready_ms(d->watch) : -1;
	int64_t at = ready < 0 ? -1 : now + ready;
	struct itimerspec its = { 0 };
	int64_t due;

	at = earliest(at, d->next_watchdog_ms);
	at = earliest(at, d->next_rescan_ms);
	at = earliest(at, d->next_cleanup_ms);
	at = earliest(at, d->next_unwatched_ms);
	at = earliest(at, d->next_metrics_ms);
	at = earliest(at, d->next_purge_ms);
	at = earliest(at, d->next_status_ms);
	at = earliest(at, commit_due_ms(d));
	if (d->studies != NULL && (due = studies_due_in_ms(d->studies)) >= 0)
		at = earliest(at, now + due);
	if (d->rewatch_needed)
		at = earliest(at, now + 1000);
	if (at >= 0) {
		if (at <= now)
			at = now + 1;
		its.it_value.tv_sec = at / 1000;
		its.it_value.tv_nsec = (at % 1000) * 1000000;
	}
	/* Armed for that instant already, and not fired since: the loop
	 * turns several times per file in a burst. */
	if (at == d->armed_at)
		return;
	d->armed_at = at;
	timerfd_settime(d->fds[SLOT_TIMER].fd, TFD_TIMER_ABSTIME, &its, NULL);
}

#define WALK_NEW	"new folders"

/* A new walk of the whole tree starts; scan_some() runs it in slices. */
static void walk_started(struct daemon *d, const char *why)
{
	d->scan_why = why;
	d->scan_found = 0;
	d->scan_logged = false;
	if (d->started)
		update_status(d);	/* "scanning the input folder" */
}

/*
 * Watches again from scratch (which forgets the library's stale records),
 * then the walk. A walk already under way is left to finish: restarting
 * it at every interval would never let a long one reach its end.
 */
static void rewatch(struct daemon *d, const char *why)
{
	struct error err = ERROR_INIT;

	if (watch_scanning(d->watch) && !d->rewatch_needed)
		return;
	d->rewatch_needed = watch_rebuild(d->watch, &err) == -1;
	walk_started(d, why);
	if (d->rewatch_needed)
		log_msg(LOG_ERR, "cannot watch %s again (%s): %s", d->cfg->input,
			why, err.msg);
}

/*
 * Started: the backlog is queued (taking files began meanwhile). READY=1
 * and the start record wait for the first walk; the loop answers signals
 * and the watchdog during it.
 */
static void announce_start(struct daemon *d)
{
	struct audit_record start = { .event = "start", .priority = LOG_INFO };
	char status[sizeof(d->last_error) + 1024], reason[PATH_MAX * 2];

	d->started = true;
	snprintf(reason, sizeof(reason), "watching %s, sorting into %s, "
		 "profile %s, %ld workers", d->cfg->input, d->cfg->output,
		 deid_profile_name(d->cfg->profile), d->cfg->workers);
	start.reason = reason;
	log_audit(&start);
	status_text(d, status, sizeof(status));
	notify_ready(status);
}

/*
 * The end of a walk: what it found, and whether folders are left beyond
 * the inotify watch limit. Those are rescanned every unwatched_rescan_s
 * (a plain walk: it watches what now fits), and STATUS says so.
 */
static void scan_finished(struct daemon *d, int64_t now)
{
	int e = 0;
	size_t n = watch_unwatched(d->watch, &e);

	d->scan_logged = true;
	if (!d->started) {
		if (d->scan_found > 0)
			log_msg(LOG_INFO, "backlog: %ld files waiting in %s",
				d->scan_found, d->cfg->input);
	} else if (d->scan_found > 0 && strcmp(d->scan_why, WALK_NEW) != 0) {
		/* (New folders' files are news only to the watch.) */
		log_msg(LOG_INFO, "%s: %ld files found in %s", d->scan_why,
			d->scan_found, d->cfg->input);
	}
	if (n > 0) {
		int64_t at = now + d->cfg->watch.unwatched_rescan_s * 1000;

		/* Once on entering degraded mode: a count that changes with
		 * every new folder is for STATUS, not for the log. */
		if (d->unwatched == 0)
			log_msg(LOG_WARNING, "degraded: %zu folders below %s are "
				"not watched (%s); their files are found by a "
				"rescan every %ld s instead of at once", n,
				d->cfg->input, e == ENOSPC ? "the inotify watch "
				"limit fs.inotify.max_user_watches is reached" :
				strerror(e), d->cfg->watch.unwatched_rescan_s);
		d->next_unwatched_ms = at;
	} else {
		if (d->unwatched > 0)
			log_msg(LOG_NOTICE, "every folder below %s is watched "
				"again", d->cfg->input);
		d->next_unwatched_ms = -1;
	}
	d->unwatched = n;
	if (d->started)
		update_status(d);
	else
		announce_start(d);
}

/* One slice of the walk under way: a few milliseconds, so that signals,
 * events and finished files are handled in between. */
static void scan_some(struct daemon *d, int64_t now)
{
	struct error err = ERROR_INIT;
	long found;

	if (!watch_scanning(d->watch)) {
		if (!d->scan_logged)
			scan_finished(d, now);
		return;
	}
	found = watch_scan_step(d->watch, &err);
	if (found > 0)
		d->scan_found += found;
	if (!watch_scanning(d->watch))
		scan_finished(d, now);
}

static void handle_timer(struct daemon *d, int64_t now)
{
	uint64_t expirations;

	d->armed_at = TIMER_UNARMED;	/* fired: arm again */
	if (read(d->fds[SLOT_TIMER].fd, &expirations, sizeof(expirations)) == -1 &&
	    errno != EAGAIN)
		log_msg(LOG_WARNING, "timerfd: %s", strerror(errno));
	if (d->next_watchdog_ms >= 0 && now >= d->next_watchdog_ms) {
		notify_watchdog();
		d->next_watchdog_ms = now + d->watchdog_ms / 2;
	}
	if (d->rewatch_needed || (d->next_rescan_ms >= 0 && now >= d->next_rescan_ms)) {
		rewatch(d, "rescan");
		d->next_rescan_ms = d->cfg->rescan.interval_s > 0 ?
				    now + d->cfg->rescan.interval_s * 1000 : -1;
	}
	if (d->next_unwatched_ms >= 0 && now >= d->next_unwatched_ms) {
		d->next_unwatched_ms = -1;
		if (!watch_scanning(d->watch)) {
			watch_scan_begin(d->watch);
			walk_started(d, "rescan of unwatched folders");
		}
	}
	if (d->next_cleanup_ms >= 0 && now >= d->next_cleanup_ms) {
		watch_remove_empty_dirs(d->watch, d->cfg->cleanup.min_age_s);
		d->next_cleanup_ms = now + 30 * 1000;
	}
	if (d->next_metrics_ms >= 0 && now >= d->next_metrics_ms) {
		write_metrics(d);
		d->next_metrics_ms = now + d->cfg->metrics_interval_s * 1000;
	}
	if (d->next_purge_ms >= 0 && now >= d->next_purge_ms) {
		purge_quarantine(d);
		d->next_purge_ms = now + DAEMON_PURGE_INTERVAL_MS;
	}
	studies_complete_due(d->studies);
	if (d->next_status_ms >= 0 && now >= d->next_status_ms) {
		retry_unqueued(d);
		update_status(d);
		d->next_status_ms = now + FORWARD_STATUS_MS;
	}
}

static void handle_watch(struct daemon *d)
{
	struct error err = ERROR_INIT;

	bool was_scanning = watch_scanning(d->watch);

	if (watch_handle_events(d->watch, &err) == -1) {
		log_msg(LOG_ERR, "watching %s: %s", d->cfg->input, err.msg);
		d->rewatch_needed = true;
	}
	/* New folders (or a rebuild after an overflow) start a walk. */
	if (!was_scanning && watch_scanning(d->watch))
		walk_started(d, WALK_NEW);
}

/* ---- setup and teardown ---- */

/*
 * What a SIGKILL may have left, put right before any file is taken:
 * sources claimed for a move or delete get their names back (and are
 * sorted again: an identical output makes it a duplicate), temp files in
 * quarantine and hold go.
 */
static int recover_leftovers(struct daemon *d, struct error *err)
{
	long n = fsutil_recover_claims(d->cfg->input, err);

	if (n < 0)
		return -1;
	if (n > 0)
		log_msg(LOG_NOTICE, "%ld claimed files in %s got their names "
			"back after an interrupted move", n, d->cfg->input);
	if (quarantine_sweep(d->cfg->quarantine, err) < 0)
		return -1;
	if (d->cfg->hold != NULL && quarantine_sweep(d->cfg->hold, err) < 0)
		return -1;
	return 0;
}

static int open_folders(struct daemon *d, struct error *err)
{
	/* A mistyped input must not become a new, empty folder that nobody
	 * drops into: it has to exist already. */
	int fd = fsutil_open_dir(d->cfg->input, false, err);

	if (fd == -1)
		return -1;
	close(fd);
	d->quarantine_fd = fsutil_open_dir(d->cfg->quarantine, true, err);
	if (d->quarantine_fd == -1)
		return -1;
	if (d->cfg->hold != NULL) {
		d->hold_fd = fsutil_open_dir(d->cfg->hold, true, err);
		if (d->hold_fd == -1)
			return -1;
	}
	return recover_leftovers(d, err);
}

/* The audit names every destination, so when de-identifying the source's
 * own name (which may be a patient's) is not reused unless configured. */
static const char *daemon_file_name(const struct config *cfg)
{
	if (cfg->filename == NULL && cfg->profile != DEID_NONE)
		return PIPELINE_DEIDENTIFIED_NAME;
	return cfg->filename;
}

/*
 * The pipeline cfg describes, with its secret (which must outlive it) and
 * table; dry_run builds it without touching the output (--check-config).
 */
static int open_pipeline(const struct config *cfg, bool dry_run,
			 struct pipeline **pipeline, struct deid_secret **secret,
			 struct error *err)
{
	struct correlation *table = NULL;
	struct pipeline_options opts = {
		.output_dir = cfg->output,
		.dir_template = cfg->layout,
		.name_template = daemon_file_name(cfg),
		.sync = PIPELINE_SYNC_GROUP,
		.disposal = cfg->after_success == AFTER_SUCCESS_MOVE ?
			    PIPELINE_MOVE_SOURCE : PIPELINE_DELETE_SOURCE,
		.processed_dir = cfg->processed,
		/* A source that needs no change is renamed into place:
		 * no copy, no deletion of the source (after_success =
		 * "delete" only; "move" keeps the source). Not when
		 * forwarding: a copy's source stays until its outbox entry
		 * is durable, so a crash before that finds it again and
		 * queues it; a renamed source cannot be found again, and
		 * its entry would rest on the pending marker alone, which
		 * a power loss can lose (records.h: no fsync). Only a
		 * source of the group an output gets: who may read it. */
		.rename_unchanged = cfg->rename_unchanged &&
				    cfg->after_success == AFTER_SUCCESS_DELETE &&
				    cfg->n_forward == 0,
		.rename_same_group = true,
		.max_file_size = config_max_file_size(cfg),
		.dry_run = dry_run,
		.hash_source = true,
		/* setup() ignores SIGIO before any thread: a read lease
		 * needs no F_SETSIG per file. The dry run takes none. */
		.sigio_ignored = !dry_run,
	};
	int rc;

	config_deid_options(cfg, &opts.deid);
	if (cfg->deid.secret != NULL &&
	    deid_secret_load(secret, cfg->deid.secret, err) == -1)
		return -1;
	opts.deid.secret = *secret;
	if (cfg->correlation_table != NULL &&
	    correlation_load(&table, cfg->correlation_table, err) == -1)
		return -1;
	opts.deid.table = table;
	rc = pipeline_new(pipeline, &opts, err);
	correlation_unref(table);
	return rc;
}

int daemon_dry_pipeline(const struct config *cfg, struct pipeline **pipeline,
			struct deid_secret **secret, struct error *err)
{
	if (dicom_init(err) == -1)
		return -1;
	return open_pipeline(cfg, true, pipeline, secret, err);
}

int daemon_check_config(const struct config *cfg, struct error *err)
{
	struct deid_secret *secret = NULL;
	struct pipeline *pipeline = NULL;
	int rc = -1;

	if (dicom_init(err) == 0)
		rc = open_pipeline(cfg, true, &pipeline, &secret, err);
	pipeline_free(pipeline);
	deid_secret_free(secret);
	return rc;
}

/*
 * A folder the walk will not enter: an error record, once per walk that
 * meets it. Folder names in a drop folder may be a patient's: when
 * de-identifying the record names its inode only.
 */
static void report_walk_problem(void *ctx, enum watch_problem what,
				const char *dir, unsigned depth)
{
	struct daemon *d = ctx;
	size_t rootlen = strlen(d->cfg->input);
	char source[64], reason[256];
	struct audit_record rec = { .event = "not-watched", .priority = LOG_ERR,
				    .source = dir, .reason = reason };
	struct stat st;

	if (strncmp(dir, d->cfg->input, rootlen) == 0 && dir[rootlen] == '/')
		rec.source = dir + rootlen + 1;
	if (d->cfg->profile != DEID_NONE) {
		if (lstat(dir, &st) == 0)
			snprintf(source, sizeof(source), "inode %llu",
				 (unsigned long long)st.st_ino);
		else
			snprintf(source, sizeof(source), "(name withheld)");
		rec.source = source;
	}
	if (what == WATCH_TOO_DEEP)
		snprintf(reason, sizeof(reason), "folder %u levels below the "
			 "input folder, deeper than watch.max_depth (%ld): "
			 "neither watched nor scanned, no file below it is "
			 "taken; everything else goes on", depth,
			 d->cfg->watch.max_depth);
	else
		snprintf(reason, sizeof(reason), "a folder below this one has "
			 "a path longer than %d bytes: neither watched nor "
			 "scanned, no file below it is taken; everything else "
			 "goes on", PATH_MAX - 1);
	log_audit(&rec);
	snprintf(d->last_error, sizeof(d->last_error), "%s: %s", rec.source,
		 what == WATCH_TOO_DEEP ? "folder deeper than watch.max_depth, "
		 "not watched" : "path too long, not watched");
}

/*
 * How long inotify events gather between two reads: 1% of settle_ms, at
 * most GATHER_MAX_MS. A burst then costs a read per few dozen events
 * instead of a wake-up (seven calls) per event, and no file waits for
 * it more than a hundredth of the settle it waits anyway.
 */
#define GATHER_MAX_MS	10

static long gather_ms(long settle_ms)
{
	long ms = settle_ms / 100;

	return ms < GATHER_MAX_MS ? ms : GATHER_MAX_MS;
}

/* Watches go in as the walk of the backlog gets to each folder: the loop
 * runs it in slices (scan_some()), so a signal never waits for it. */
static int setup_watch(struct daemon *d, struct error *err)
{
	struct watch_options opts = {
		.root = d->cfg->input,
		.ignore = (const char *const *)d->cfg->ignore,
		.settle_ms = d->cfg->settle_ms,
		.max_depth = d->cfg->watch.max_depth,
		.report = report_walk_problem,
		.report_ctx = d,
		.deferred = true,
		.gather_ms = gather_ms(d->cfg->settle_ms),
		.test_entry_delay_ms = d->delay_scan_entry_ms,
	};

	if (watch_new(&d->watch, &opts, err) == -1)
		return -1;
	watch_scan_begin(d->watch);
	walk_started(d, "backlog");
	return 0;
}

/*
 * DICOMSORT_TEST_DELAY=published:MS sleeps MS ms between an output's
 * publication and its `stored` record, so a test can SIGKILL the daemon
 * exactly there. DICOMSORT_TEST_DELAY=held:MS sleeps MS ms (and says so)
 * between the decision to hold a file and its move into hold, so a test
 * can reload the table in that window. DICOMSORT_TEST_DELAY=scan-entry:MS
 * sleeps MS ms per folder entry the walk of the input tree looks at, so a
 * test can signal the daemon in the middle of a long scan;
 * DICOMSORT_TEST_DELAY=release-entry:MS sleeps MS ms per held file a reload
 * releases, for a SIGTERM in the middle of a release.
 * DICOMSORT_TEST_DELAY=parsed:MS and durable:MS sleep (and say so) after a
 * source's snapshot is parsed, and after its output is durable and before
 * the source is checked and disposed of: windows for a test to rewrite or
 * rename the source. DICOMSORT_TEST_DELAY=commit:MS sleeps (and says so)
 * before each group commit's syncfs: files published and not yet durable,
 * for a kill that must find every source still there (or, renamed into
 * place, its output). DICOMSORT_TEST_DELAY=claimed:MS sleeps (and says
 * so) with a source that needs no change claimed, before its rename into
 * the output: a kill there must give it its name back at the next start.
 * DICOMSORT_TEST_DELAY=commit-fails:N makes the first N group commits fail
 * as a syncfs reporting EIO would (nothing is synced): a write-back error
 * cannot be had on demand. Without the variable nothing changes.
 */
static void test_delays(struct daemon *d)
{
	const char *v = getenv("DICOMSORT_TEST_DELAY");

	if (v != NULL && strncmp(v, "published:", 10) == 0)
		d->delay_published_ms = strtol(v + 10, NULL, 10);
	if (v != NULL && strncmp(v, "held:", 5) == 0)
		d->delay_held_ms = strtol(v + 5, NULL, 10);
	if (v != NULL && strncmp(v, "parsed:", 7) == 0)
		d->delay_parsed_ms = strtol(v + 7, NULL, 10);
	if (v != NULL && strncmp(v, "durable:", 8) == 0)
		d->delay_durable_ms = strtol(v + 8, NULL, 10);
	if (v != NULL && strncmp(v, "commit:", 7) == 0)
		d->delay_commit_ms = strtol(v + 7, NULL, 10);
	if (v != NULL && strncmp(v, "claimed:", 8) == 0)
		d->delay_claimed_ms = strtol(v + 8, NULL, 10);
	if (v != NULL && strncmp(v, "commit-fails:", 13) == 0)
		d->fail_commits = strtol(v + 13, NULL, 10);
	if (v != NULL && strncmp(v, "release-entry:", 14) == 0) {
		d->delay_release_ms = strtol(v + 14, NULL, 10);
		log_msg(LOG_INFO, "test delay: %ld ms per held file released",
			d->delay_release_ms);
	}
	if (v != NULL && strncmp(v, "scan-entry:", 11) == 0) {
		d->delay_scan_entry_ms = strtol(v + 11, NULL, 10);
		log_msg(LOG_INFO, "test delay: %ld ms per entry walked",
			d->delay_scan_entry_ms);
	}
}

static void setup_metrics(struct daemon *d, int64_t now)
{
	char stem[64];

	config_stem(d->cfg, stem, sizeof(stem));
	metrics_init(&d->metrics, stem, time(NULL));
	d->next_metrics_ms = now;
	d->next_purge_ms = d->cfg->quarantine_max_age_days > 0 ? now : -1;
}

/* An output a kill left without its record: owed to forwarding and to
 * its study. */
static void recovered(void *ctx, const char *dest)
{
	struct daemon *d = ctx;

	if (d->forward != NULL)
		forward_recovered(d->forward, dest);
	studies_recovered(d->studies, dest);
}

/*
 * *config_error tells a failure the configuration caused (a folder, the
 * table, the secret, a template: exit 2, restarting will not help) from
 * one of the process (descriptors, threads: exit 1, a restart may help).
 */
static int setup(struct daemon *d, struct error *err, bool *config_error)
{
	int64_t now = watch_now_ms();

	for (int i = 0; i < SLOT_COUNT; i++)
		d->fds[i].fd = -1;
	pthread_mutex_init(&d->owner_cache.lock, NULL);
	d->quarantine_fd = -1;
	d->hold_fd = -1;
	*config_error = false;
	/* A broken read lease is signalled with SIGIO, whose default
	 * would end us; the break is looked for with F_GETLEASE
	 * (fsutil.h), and nothing here uses O_ASYNC or F_SETOWN. Ignored
	 * once, before any thread, instead of an F_SETSIG per file. */
	if (fsutil_ignore_sigio() == -1)
		return error_set(err, ERROR_SETUP, errno, "sigaction");
	d->fds[SLOT_SIGNAL].fd = block_signals();
	if (d->fds[SLOT_SIGNAL].fd == -1)
		return error_set(err, ERROR_SETUP, errno, "signalfd");
	d->armed_at = TIMER_UNARMED;
	d->fds[SLOT_TIMER].fd = timerfd_create(CLOCK_MONOTONIC,
					       TFD_CLOEXEC | TFD_NONBLOCK);
	if (d->fds[SLOT_TIMER].fd == -1)
		return error_set(err, ERROR_SETUP, errno, "timerfd");
	*config_error = true;
	if (dicom_init(err) == -1 || open_folders(d, err) == -1 ||
	    open_pipeline(d->cfg, false, &d->pipeline, &d->secret, err) == -1 ||
	    records_open(&d->records, d->cfg->output, err) == -1 ||
	    forward_start(&d->forward, d->cfg, NULL, err) == -1)
		return -1;
	table_digest(d->cfg->correlation_table, d->table_sha256,
		     sizeof(d->table_sha256));
	test_delays(d);
	/* Records a SIGKILL left owed go out before any new file. */
	if (studies_open(&d->studies, d->cfg, err) == -1)
		return -1;
	if (records_recover_hooked(d->records, recovered, d) > 0)
		log_msg(LOG_NOTICE, "sent the stored records of files stored "
			"just before the daemon was killed");
	/* Watches go in before the backlog scan, so nothing that arrives
	 * between the two is missed. */
	if (setup_watch(d, err) == -1)
		return -1;
	*config_error = false;
	d->waiting_tail = &d->waiting;
	/* The committer and disposers first: teardown() stops them if the
	 * workers fail. */
	if (workers_start(&d->committer, 1, commit_run, d, err) == -1 ||
	    workers_start(&d->disposers, DISPOSERS, dispose_run, d, err) == -1 ||
	    workers_start(&d->workers, (size_t)d->cfg->workers, run_job, d,
			  err) == -1)
		return -1;
	d->max_outstanding = (size_t)d->cfg->workers * 8;
	d->watchdog_ms = notify_watchdog_ms();
	d->next_watchdog_ms = d->watchdog_ms > 0 ? now : -1;
	d->next_rescan_ms = d->cfg->rescan.interval_s > 0 ?
			    now + d->cfg->rescan.interval_s * 1000 : -1;
	d->next_cleanup_ms = d->cfg->cleanup.remove_empty_dirs ?
			     now + 30 * 1000 : -1;
	d->next_unwatched_ms = -1;
	setup_metrics(d, now);
	d->next_status_ms = d->forward != NULL ? now + FORWARD_STATUS_MS : -1;
	for (int i = 0; i < SLOT_COUNT; i++)
		d->fds[i].events = POLLIN;
	d->fds[SLOT_DONE].fd = workers_fd(d->workers);
	d->fds[SLOT_COMMIT].fd = workers_fd(d->committer);
	d->fds[SLOT_DISPOSED].fd = workers_fd(d->disposers);
	return 0;
}

/* Free what setup() got, also after it failed half-way. */
static void teardown(struct daemon *d)
{
	if (d->committer != NULL && !d->committer_stopped &&
	    workers_stop(d->committer, watch_now_ms() + 10000) == 0)
		d->committer_stopped = true;
	workers_free(d->workers, job_free);
	if (d->committer_stopped)
		workers_free(d->committer, free_commit);
	if (d->disposers != NULL && !d->disposers_stopped &&
	    workers_stop(d->disposers, watch_now_ms() + 10000) == 0)
		d->disposers_stopped = true;
	if (d->disposers_stopped)
		workers_free(d->disposers, job_free);
	while (d->waiting != NULL) {
		struct job *next = d->waiting->commit_next;

		job_free(d->waiting);
		d->waiting = next;
	}
	forward_stop(d->forward, 0);
	forward_free(d->forward);
	watch_free(d->watch);
	while (d->disposals != NULL)
		forget_disposal(d, d->disposals->path);
	while (d->unqueued != NULL) {	/* their markers stay: next start */
		struct unqueued *u = d->unqueued;

		d->unqueued = u->next;
		free(u);
	}
	records_free(d->records);
	studies_free(d->studies);
	pipeline_free(d->pipeline);
	deid_secret_free(d->secret);
	if (d->quarantine_fd != -1)
		close(d->quarantine_fd);
	if (d->hold_fd != -1)
		close(d->hold_fd);
	if (d->fds[SLOT_SIGNAL].fd != -1)
		close(d->fds[SLOT_SIGNAL].fd);
	if (d->fds[SLOT_TIMER].fd != -1)
		close(d->fds[SLOT_TIMER].fd);
	pthread_mutex_destroy(&d->owner_cache.lock);
}

/*
 * A configuration error exits 2, which the unit's RestartPreventExitStatus=2
 * turns into a stop instead of a restart every RestartSec for ever. Errors
 * a restart may cure (no memory, no descriptors, an I/O error) stay 1 even
 * while the configuration is read.
 */
static int start_failure_status(const struct error *err, bool config_error)
{
	switch (err->errnum) {
	case EIO: case ENOMEM: case EMFILE: case ENFILE: case EAGAIN:
	case EINTR: case ETIMEDOUT: case ESTALE:
		return 1;
	default:
		return config_error ? 2 : 1;
	}
}

/* Stop taking files; let the running ones finish within the bound. Files
 * not started stay in the input folder for the next start. */
static int shut_down(struct daemon *d)
{
	int64_t deadline = watch_now_ms() + d->cfg->shutdown.timeout_s * 1000;
	struct audit_record rec = { .event = "stop", .priority = LOG_INFO };
	int rc;

	notify_stopping();
	rc = workers_stop(d->workers, deadline);
	if (rc == 0)
		collect_done(d);
	/* Published files wait for their commit: it is made now. */
	if (rc == 0)
		rc = commit_all(d, deadline);
	/* The senders finish their batch; what they leave stays queued in
	 * the outbox for the next start. */
	if (rc == 0 && forward_stop(d->forward, deadline) == -1)
		rc = -1;
	write_metrics(d);
	rec.reason = rc == 0 ? "all files in flight finished" :
		     "timed out waiting for files in flight";
	log_audit(&rec);
	if (rc == -1) {
		/* Leave now, under the running threads' feet: every step of
		 * a job is crash-safe, and they must not outlive our data. */
		fflush(stderr);
		_exit(0);
	}
	teardown(d);
	return 0;
}

static void serve(struct daemon *d)
{
	while (!d->stopping) {
		int64_t now;
		int timeout;

		dispatch(d);
		now = watch_now_ms();
		maybe_commit(d, now);
		schedule_cleanup(d, now);
		arm_timer(d, now);
		/* Inotify events gather between reads (watch_poll_fd()). */
		d->fds[SLOT_WATCH].fd = watch_poll_fd(d->watch, now);
		timeout = watch_poll_timeout_ms(d->watch, now);
		/* While a walk is under way, only look: it goes on below. */
		if (watch_scanning(d->watch))
			timeout = 0;
		now = watch_now_ms();
		if (poll(d->fds, SLOT_COUNT, timeout) == -1) {
			if (errno != EINTR)
				log_msg(LOG_ERR, "poll: %s", strerror(errno));
			continue;
		}
		if (d->fds[SLOT_WATCH].fd != -1)
			watch_polled(d->watch, now,
				     d->fds[SLOT_WATCH].revents & POLLIN);
		now = watch_now_ms();
		for (int i = 0; i < SLOT_COUNT; i++)
			if (d->fds[i].revents & (POLLERR | POLLNVAL))
				log_msg(LOG_ERR, "poll slot %d: error", i);
		if (d->fds[SLOT_SIGNAL].revents & POLLIN)
			handle_signals(d);
		if (d->fds[SLOT_WATCH].revents & POLLIN)
			handle_watch(d);
		if (d->fds[SLOT_DONE].revents & POLLIN)
			collect_done(d);
		if (d->fds[SLOT_COMMIT].revents & POLLIN)
			collect_commits(d);
		if (d->fds[SLOT_DISPOSED].revents & POLLIN)
			collect_disposed(d);
		if (d->fds[SLOT_TIMER].revents & POLLIN)
			handle_timer(d, now);
		if (!d->stopping)
			scan_some(d, now);
	}
}

int daemon_run(const struct config *cfg)
{
	struct daemon d = { .cfg = cfg };
	struct error err = ERROR_INIT;
	bool config_error;
	int exit_status;

	if (setup(&d, &err, &config_error) == -1) {
		exit_status = start_failure_status(&err, config_error);
		redact_quoted(cfg, err.msg);
		log_msg(LOG_ERR, "cannot start: %s%s", err.msg, exit_status == 2 ?
			" (a configuration error: exit status 2, not restarted)" :
			"");
		teardown(&d);
		return exit_status;
	}
	serve(&d);
	return shut_down(&d);
}
