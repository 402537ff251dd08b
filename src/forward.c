/* forward.c - outbox queues, sender threads and their records; see forward.h. */
#include "dicomsort/forward.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dicomsort/delivery.h"
#include "dicomsort/dicom.h"
#include "dicomsort/log.h"
#include "dicomsort/outbox.h"


/* One queued entry; busy while a thread is sending it. The list keeps
 * the order entries came in; a retried entry keeps its place. */
struct entry {
	struct entry *prev, *next;
	char name[OUTBOX_NAME_MAX];
	time_t since;
	bool busy;
	bool gone;	/* its file left the outbox behind our back */
};

struct dest {
	struct forward *f;
	const struct config_forward *cf;
	struct outbox *ob;
	struct dimse_peer dimse;
	struct stow_peer stow;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct entry *head, *tail;
	size_t queued;
	int64_t resume_ms;	/* no new batch before (backoff) */
	long backoff_ms;	/* the next delay on a retry */
	unsigned seed;		/* jitter (rand_r, under mu) */
	unsigned long forwarded, rejected, retries;
	pthread_t *threads;
	size_t nthreads;
	bool stopping;
};

struct forward {
	const struct config *cfg;
	struct dest *dests;
	size_t n;
	long delay_forwarded_ms;	/* DICOMSORT_TEST_DELAY=forwarded:MS */
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the queue (callers hold d->mu) ---- */

static void push(struct dest *d, struct entry *e)
{
	e->prev = d->tail;
	e->next = NULL;
	if (d->tail != NULL)
		d->tail->next = e;
	else
		d->head = e;
	d->tail = e;
	d->queued++;
}

static void unlink_entry(struct dest *d, struct entry *e)
{
	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		d->head = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	else
		d->tail = e->prev;
	d->queued--;
	free(e);
}

static bool queued_already(const struct dest *d, const char *name)
{
	for (const struct entry *e = d->head; e != NULL; e = e->next)
		if (strcmp(e->name, name) == 0)
			return true;
	return false;
}

static int enqueue(struct dest *d, const char *name, time_t since, bool check)
{
	struct entry *e;

	pthread_mutex_lock(&d->mu);
	if (check && queued_already(d, name)) {
		pthread_mutex_unlock(&d->mu);
		return 0;
	}
	e = calloc(1, sizeof(*e));
	if (e == NULL) {
		pthread_mutex_unlock(&d->mu);
		return -1;
	}
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->since = since;
	push(d, e);
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
	return 0;
}

/* ---- one batch, on a sender thread ---- */

struct batch {
	struct entry **entries;
	struct delivery_item *items;
	char (*paths)[PATH_MAX];
	size_t n;
};

static void peer_status(const struct dest *d, const struct delivery_item *it,
			char *buf, size_t len)
{
	/* 0x0000 is C-STORE success; otherwise 0 means no answer. */
	if (it->status == 0 && !(it->result == DELIVERY_DONE &&
				 d->cf->kind == FORWARD_DIMSE))
		snprintf(buf, len, "none");
	else if (d->cf->kind == FORWARD_STOW)
		snprintf(buf, len, "HTTP %u", it->status);
	else
		snprintf(buf, len, "0x%04X", it->status);
}

static void record(const struct dest *d, const char *event, int priority,
		   const char *name, const struct delivery_item *it,
		   const char *reason)
{
	char ref[PATH_MAX], status[32];
	struct audit_record rec = {
		.event = event,
		.priority = priority,
		.dest = ref,
		.sop_instance_uid = it->sop_instance_uid[0] ?
				    it->sop_instance_uid : NULL,
		.reason = reason && reason[0] ? reason : NULL,
		.destination = d->cf->name,
		.peer_status = status,
	};

	outbox_ref(d->ob, name, ref, sizeof(ref));
	if (ref[0] == '\0')
		rec.dest = NULL;
	peer_status(d, it, status, sizeof(status));
	log_audit(&rec);
}

/* The UIDs the transport negotiates with, read as the file says them.
 * A file we cannot read here is one the peer will not take either. */
static int describe(struct delivery_item *it, const char *path,
		    struct error *err)
{
	struct dicom_file *file = NULL;
	struct stat st;
	char *cls = NULL, *inst = NULL;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), rc = -1;

	if (fd == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "cannot open the "
				 "outbox entry");
	if (fstat(fd, &st) == 0 &&
	    dicom_load_fd(&file, fd, st.st_size, path, err) == 0 &&
	    dicom_get_string(file, TAG_SOPClassUID, &cls) == 1 &&
	    dicom_get_string(file, TAG_SOPInstanceUID, &inst) == 1) {
		snprintf(it->sop_class_uid, sizeof(it->sop_class_uid), "%s", cls);
		snprintf(it->sop_instance_uid, sizeof(it->sop_instance_uid), "%s",
			 inst);
		snprintf(it->transfer_syntax_uid, sizeof(it->transfer_syntax_uid),
			 "%s", dicom_transfer_syntax(file));
		rc = 0;
	} else if (err->kind == ERROR_NONE) {
		error_set(err, ERROR_INPUT, 0, "no SOPClassUID or SOPInstanceUID");
	}
	free(cls);
	free(inst);
	dicom_free(file);
	close(fd);
	return rc;
}

/* Fill the items; an entry that cannot be read is settled here. */
static void prepare(struct dest *d, struct batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		struct delivery_item *it = &b->items[i];
		struct error err = ERROR_INIT;

		memset(it, 0, sizeof(*it));
		outbox_path(d->ob, b->entries[i]->name, b->paths[i],
			    sizeof(b->paths[i]));
		it->path = b->paths[i];
		if (describe(it, it->path, &err) == 0)
			continue;
		snprintf(it->reason, sizeof(it->reason), "%s", err.msg);
		it->result = err.kind == ERROR_INPUT ? DELIVERY_REJECTED :
			     DELIVERY_RETRY;
		/* Removed by hand: nothing to send, nothing to record as
		 * sent. */
		b->entries[i]->gone = err.errnum == ENOENT;
	}
}

static void send_batch(struct dest *d, struct batch *b)
{
	struct error err = ERROR_INIT;
	struct delivery_item *send;
	size_t pending = 0, *map, k = 0;
	int rc;

	for (size_t i = 0; i < b->n; i++)
		pending += b->items[i].result == DELIVERY_PENDING &&
			   !b->entries[i]->gone;
	if (pending == 0)
		return;
	/* Items already settled keep their result: the transports skip
	 * nothing, so the batch is compacted first. */
	send = calloc(pending, sizeof(*send));
	map = calloc(pending, sizeof(*map));

	if (send == NULL || map == NULL) {
		free(send);
		free(map);
		for (size_t i = 0; i < b->n; i++)
			if (b->items[i].result == DELIVERY_PENDING) {
				b->items[i].result = DELIVERY_RETRY;
				snprintf(b->items[i].reason,
					 sizeof(b->items[i].reason),
					 "out of memory");
			}
		return;
	}
	for (size_t i = 0; i < b->n; i++)
		if (b->items[i].result == DELIVERY_PENDING) {
			send[k] = b->items[i];
			map[k++] = i;
		}
	if (d->cf->kind == FORWARD_STOW)
		rc = stow_send(&d->stow, send, pending, &err);
	else
		rc = dimse_send(&d->dimse, send, pending, &err);
	for (size_t j = 0; j < pending; j++) {
		struct delivery_item *it = &send[j];

		if (it->result == DELIVERY_PENDING) {
			it->result = DELIVERY_RETRY;
			snprintf(it->reason, sizeof(it->reason), "%s",
				 rc == -1 && err.msg[0] ? err.msg :
				 "no answer from the peer");
		}
		b->items[map[j]] = *it;
		b->items[map[j]].path = b->paths[map[j]];
	}
	free(send);
	free(map);
}

/*
 * DICOMSORT_TEST_DELAY=forwarded:MS (test-only, as daemon.c's): sleep MS
 * ms between a peer's confirmation (its record logged) and the removal of
 * the entry, so a test can SIGKILL the daemon exactly there. Unset, nothing
 * changes.
 */
static long test_delay_ms(void)
{
	const char *v = getenv("DICOMSORT_TEST_DELAY");

	if (v != NULL && strncmp(v, "forwarded:", 10) == 0)
		return strtol(v + 10, NULL, 10);
	return 0;
}

static void test_delay(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	if (ms > 0)
		nanosleep(&ts, NULL);
}

/* Into rejected/, the peer's status leading the reason. */
static int reject(struct dest *d, const char *name,
		  const struct delivery_item *it, struct error *err)
{
	char status[32], reason[DELIVERY_REASON_MAX + 64];

	peer_status(d, it, status, sizeof(status));
	snprintf(reason, sizeof(reason), "peer status %s: %s", status,
		 it->reason[0] ? it->reason : "refused");
	return outbox_reject(d->ob, name, reason, err);
}

/* Settle each item: the record, then the outbox, then the queue. A kill
 * between record and outbox sends the entry again at the next start,
 * and the audit then shows both sends. */
static void settle(struct dest *d, struct batch *b)
{
	bool retry = false, done = false;

	for (size_t i = 0; i < b->n; i++) {
		struct delivery_item *it = &b->items[i];
		const char *name = b->entries[i]->name;
		struct error err = ERROR_INIT;

		if (b->entries[i]->gone) {
			log_msg(LOG_WARNING, "forward %s: outbox entry %s was "
				"removed before it was sent", d->cf->name, name);
			continue;
		}
		switch (it->result) {
		case DELIVERY_DONE:
			record(d, "forwarded", LOG_INFO, name, it, it->reason);
			test_delay(d->f->delay_forwarded_ms);
			if (outbox_done(d->ob, name, &err) == -1)
				log_msg(LOG_ERR, "forward %s: %s", d->cf->name,
					err.msg);
			done = true;
			break;
		case DELIVERY_REJECTED:
			record(d, "forward-rejected", LOG_WARNING, name, it,
			       it->reason);
			if (reject(d, name, it, &err) == -1) {
				/* Kept in the queue: sent (and refused) again
				 * after the backoff, never lost. */
				log_msg(LOG_ERR, "forward %s: %s", d->cf->name,
					err.msg);
				it->result = DELIVERY_RETRY;
				retry = true;
			}
			break;
		default:
			it->result = DELIVERY_RETRY;
			record(d, "forward-retry", LOG_NOTICE, name, it,
			       it->reason);
			retry = true;
			break;
		}
	}
	pthread_mutex_lock(&d->mu);
	for (size_t i = 0; i < b->n; i++) {
		if (b->entries[i]->gone) {
			unlink_entry(d, b->entries[i]);
			continue;
		}
		switch (b->items[i].result) {
		case DELIVERY_DONE:
			d->forwarded++;
			unlink_entry(d, b->entries[i]);
			break;
		case DELIVERY_REJECTED:
			d->rejected++;
			unlink_entry(d, b->entries[i]);
			break;
		default:
			d->retries++;
			b->entries[i]->busy = false;
			break;
		}
	}
	if (retry) {
		/* Full jitter over the upper half: threads of one peer do
		 * not come back in step. */
		long delay = d->backoff_ms / 2 +
			     rand_r(&d->seed) % (d->backoff_ms / 2 + 1);

		d->resume_ms = now_ms() + delay;
		d->backoff_ms = d->backoff_ms * 2 < d->cf->retry_max_ms ?
				d->backoff_ms * 2 : d->cf->retry_max_ms;
	} else if (done) {
		d->backoff_ms = d->cf->retry_min_ms;
		d->resume_ms = 0;
	}
	pthread_cond_broadcast(&d->cv);
	pthread_mutex_unlock(&d->mu);
}

/* Up to files_per_association entries not being sent; mu held. */
static size_t take(struct dest *d, struct batch *b)
{
	size_t n = 0;

	for (struct entry *e = d->head; e != NULL &&
	     n < (size_t)d->cf->files_per_association; e = e->next) {
		if (e->busy)
			continue;
		e->busy = true;
		b->entries[n++] = e;
	}
	return n;
}

static void wait_until(struct dest *d, int64_t at_ms)
{
	struct timespec ts;

	if (at_ms <= 0) {
		pthread_cond_wait(&d->cv, &d->mu);
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (at_ms - now_ms()) / 1000;
	ts.tv_nsec += ((at_ms - now_ms()) % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&d->cv, &d->mu, &ts);
}

static void *sender(void *arg)
{
	struct dest *d = arg;
	size_t max = (size_t)d->cf->files_per_association;
	struct batch b = {
		.entries = calloc(max, sizeof(*b.entries)),
		.items = calloc(max, sizeof(*b.items)),
		.paths = calloc(max, sizeof(*b.paths)),
	};

	if (b.entries == NULL || b.items == NULL || b.paths == NULL) {
		log_msg(LOG_ERR, "forward %s: out of memory for a sender",
			d->cf->name);
		goto out;
	}
	pthread_mutex_lock(&d->mu);
	while (!d->stopping) {
		int64_t now = now_ms();

		if (d->resume_ms > now) {
			wait_until(d, d->resume_ms);
			continue;
		}
		b.n = take(d, &b);
		if (b.n == 0) {
			wait_until(d, 0);
			continue;
		}
		pthread_mutex_unlock(&d->mu);
		prepare(d, &b);
		send_batch(d, &b);
		settle(d, &b);
		pthread_mutex_lock(&d->mu);
	}
	pthread_mutex_unlock(&d->mu);
out:
	free(b.entries);
	free(b.items);
	free(b.paths);
	return NULL;
}

/* ---- setup ---- */

static void peers_of(struct dest *d)
{
	const struct config_forward *cf = d->cf;

	d->dimse = (struct dimse_peer){
		.host = cf->host, .port = (int)cf->port,
		.called_ae = cf->called_ae, .calling_ae = cf->calling_ae,
		.tls = cf->tls, .tls_ca_file = cf->tls_ca_file,
		.tls_cert_file = cf->tls_cert_file,
		.tls_key_file = cf->tls_key_file, .tls_verify = cf->tls_verify,
		.connect_timeout_s = (int)cf->connect_timeout_s,
		.acse_timeout_s = (int)cf->acse_timeout_s,
		.dimse_timeout_s = (int)cf->dimse_timeout_s,
		.allow_conversion = cf->allow_conversion,
	};
	d->stow = (struct stow_peer){
		.url = cf->stow_url, .token_file = cf->token_file,
		.basic_auth_file = cf->basic_auth_file,
		.tls_verify = cf->tls_verify, .tls_ca_file = cf->tls_ca_file,
		.connect_timeout_s = (int)cf->connect_timeout_s,
		.timeout_s = (int)cf->timeout_s,
	};
}

static void found(void *ctx, const char *name, time_t since)
{
	if (enqueue(ctx, name, since, false) == -1)
		log_msg(LOG_ERR, "forward: out of memory queueing %s", name);
}

static int dest_open(struct forward *f, struct dest *d,
		     const struct config_forward *cf, struct error *err)
{
	pthread_condattr_t ca;
	long n;

	d->f = f;
	d->cf = cf;
	d->backoff_ms = cf->retry_min_ms;
	d->seed = (unsigned)getpid() ^ (unsigned)now_ms() ^
		  (unsigned)(uintptr_t)d;
	peers_of(d);
	pthread_mutex_init(&d->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (outbox_open(&d->ob, f->cfg->output, cf->name, err) == -1)
		return -1;
	n = outbox_scan(d->ob, found, d, err);
	if (n < 0)
		return -1;
	if (n > 0)
		log_msg(LOG_NOTICE, "forward %s: %ld files still queued from "
			"before, resuming", cf->name, n);
	return 0;
}

static int dest_threads(struct dest *d, struct error *err)
{
	size_t n = (size_t)d->cf->associations;

	d->threads = calloc(n, sizeof(*d->threads));
	if (d->threads == NULL)
		return error_set(err, ERROR_SETUP, ENOMEM, "forward threads");
	for (size_t i = 0; i < n; i++) {
		int e = pthread_create(&d->threads[i], NULL, sender, d);

		if (e != 0)
			return error_set(err, ERROR_SETUP, e, "forward %s: "
					 "cannot start a thread", d->cf->name);
		d->nthreads++;
	}
	return 0;
}

int forward_start(struct forward **out, const struct config *cfg,
		  const char *only, struct error *err)
{
	struct forward *f;

	*out = NULL;
	if (cfg->n_forward == 0)
		return 0;
	f = calloc(1, sizeof(*f));
	if (f == NULL || (f->dests = calloc(cfg->n_forward,
					    sizeof(*f->dests))) == NULL) {
		free(f);
		return error_set(err, ERROR_SETUP, ENOMEM, "forward");
	}
	f->cfg = cfg;
	f->delay_forwarded_ms = test_delay_ms();
	for (size_t i = 0; i < cfg->n_forward; i++) {
		if (only != NULL && strcmp(cfg->forward[i].name, only) != 0)
			continue;
		if (dest_open(f, &f->dests[f->n++], &cfg->forward[i], err) == -1)
			goto fail;
	}
	if (f->n == 0) {
		error_set(err, ERROR_SETUP, 0, "%s: no destination named '%s' "
			  "in 'forward'", cfg->path, only ? only : "");
		goto fail;
	}
	for (size_t i = 0; i < f->n; i++)
		if (dest_threads(&f->dests[i], err) == -1)
			goto fail;
	*out = f;
	return 0;
fail:
	forward_stop(f, 0);
	forward_free(f);
	return -1;
}

int forward_queue(struct forward *f, const char *rel, struct error *err)
{
	char name[OUTBOX_NAME_MAX];

	for (size_t i = 0; f != NULL && i < f->n; i++) {
		int rc = outbox_add(f->dests[i].ob, rel, name, sizeof(name), err);

		if (rc == -1)
			return -1;
		/* An entry already there may be queued already (a rerun's
		 * duplicate, a recovery): never twice in memory. */
		if (enqueue(&f->dests[i], name, time(NULL), rc == 1) == -1)
			return error_set(err, ERROR_TRANSIENT, ENOMEM,
					 "forward queue");
	}
	return 0;
}

void forward_recovered(void *ctx, const char *rel)
{
	struct forward *f = ctx;
	struct error err = ERROR_INIT;
	char name[OUTBOX_NAME_MAX];

	for (size_t i = 0; f != NULL && i < f->n; i++) {
		if (outbox_add(f->dests[i].ob, rel, name, sizeof(name),
			       &err) < 0 ||
		    enqueue(&f->dests[i], name, time(NULL), true) == -1)
			log_msg(LOG_ERR, "forward %s: cannot queue a file "
				"stored before a kill: %s", f->dests[i].cf->name,
				err.msg);
	}
}

size_t forward_queued(struct forward *f)
{
	size_t n = 0;

	for (size_t i = 0; f != NULL && i < f->n; i++) {
		pthread_mutex_lock(&f->dests[i].mu);
		n += f->dests[i].queued;
		pthread_mutex_unlock(&f->dests[i].mu);
	}
	return n;
}

static void dest_stat(struct dest *d, struct forward_stat *st)
{
	time_t now = time(NULL);

	pthread_mutex_lock(&d->mu);
	*st = (struct forward_stat){
		.name = d->cf->name,
		.queued = d->queued,
		.oldest_s = d->head != NULL && now > d->head->since ?
			    (long)(now - d->head->since) : 0,
		.forwarded = d->forwarded,
		.rejected = d->rejected,
		.retries = d->retries,
		.backing_off = d->resume_ms > now_ms(),
	};
	pthread_mutex_unlock(&d->mu);
}

size_t forward_stats(struct forward *f, struct forward_stat *out, size_t max)
{
	for (size_t i = 0; f != NULL && i < f->n && i < max; i++)
		dest_stat(&f->dests[i], &out[i]);
	return f != NULL ? f->n : 0;
}

void forward_status(struct forward *f, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; f != NULL && i < f->n && used < len; i++) {
		struct forward_stat st;
		int w;

		dest_stat(&f->dests[i], &st);
		w = snprintf(buf + used, len - used, "%s%s %zu queued",
			     i == 0 ? "forward " : ", ", st.name, st.queued);
		if (w > 0)
			used += (size_t)w;
		if (st.queued > 0 && used < len) {
			w = snprintf(buf + used, len - used, " (oldest %ld s%s)",
				     st.oldest_s,
				     st.backing_off ? ", retrying" : "");
			if (w > 0)
				used += (size_t)w;
		}
	}
}

struct purge_ctx {
	const struct dest *d;
	long days;
};

static void purged(void *arg, const char *name, const char *ref)
{
	const struct purge_ctx *p = arg;
	char reason[128];
	struct audit_record rec = {
		.event = "purged",
		.priority = LOG_INFO,
		.dest = ref[0] ? ref : NULL,
		.reason = reason,
		.destination = p->d->cf->name,
	};

	snprintf(reason, sizeof(reason), "%s/%s refused by the peer more "
		 "than %ld days ago (quarantine.max_age_days)", OUTBOX_REJECTED,
		 name, p->days);
	log_audit(&rec);
}

void forward_purge_rejected(struct forward *f, long days)
{
	for (size_t i = 0; f != NULL && days > 0 && i < f->n; i++) {
		struct purge_ctx p = { &f->dests[i], days };
		struct error err = ERROR_INIT;

		if (outbox_purge_rejected(f->dests[i].ob, time(NULL) -
					  days * 86400, purged, &p, &err) < 0)
			log_msg(LOG_ERR, "forward %s: purge of %s/: %s",
				f->dests[i].cf->name, OUTBOX_REJECTED, err.msg);
	}
}

int forward_stop(struct forward *f, int64_t deadline_ms)
{
	int rc = 0;

	for (size_t i = 0; f != NULL && i < f->n; i++) {
		pthread_mutex_lock(&f->dests[i].mu);
		f->dests[i].stopping = true;
		pthread_cond_broadcast(&f->dests[i].cv);
		pthread_mutex_unlock(&f->dests[i].mu);
	}
	for (size_t i = 0; f != NULL && i < f->n; i++) {
		struct dest *d = &f->dests[i];

		while (d->nthreads > 0) {
			int64_t left = deadline_ms - now_ms();
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += left > 0 ? left / 1000 : 0;
			ts.tv_nsec += left > 0 ? (left % 1000) * 1000000 : 0;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			if (deadline_ms > 0 &&
			    pthread_timedjoin_np(d->threads[d->nthreads - 1],
						 NULL, &ts) != 0) {
				rc = -1;
				break;
			}
			if (deadline_ms <= 0)
				pthread_join(d->threads[d->nthreads - 1], NULL);
			d->nthreads--;
		}
	}
	return rc;
}

void forward_free(struct forward *f)
{
	if (f == NULL)
		return;
	for (size_t i = 0; i < f->n; i++) {
		struct dest *d = &f->dests[i];

		while (d->head != NULL)
			unlink_entry(d, d->head);
		outbox_free(d->ob);
		free(d->threads);
		pthread_mutex_destroy(&d->mu);
		pthread_cond_destroy(&d->cv);
	}
	free(f->dests);
	free(f);
}

int forward_probe(const struct config_forward *cf, struct error *err)
{
	struct dest d = { .cf = cf };

	peers_of(&d);
	if (cf->kind == FORWARD_STOW)
		return stow_probe(&d.stow, err);
	return dimse_echo(&d.dimse, err);
}
