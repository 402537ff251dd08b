/* workers.c - thread pool with an eventfd back to the loop; see workers.h. */
#include "dicomsort/workers.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* A singly linked FIFO of jobs. */
struct node {
	struct node *next;
	void *job;
};

struct fifo {
	struct node *head, *tail;
	size_t len;
};

struct workers {
	pthread_mutex_t lock;
	pthread_cond_t work;		/* signalled on submit and stop */
	pthread_cond_t idle;		/* signalled when a thread ends */
	struct fifo todo, done;
	size_t running;
	size_t alive;
	bool stopping;
	bool finishing;			/* stopping, but the queue runs first */
	workers_run_fn run;
	void *ctx;
	int event_fd;
	size_t nthreads;
	size_t low_water;		/* queued jobs: at most this, wake */
	pthread_t *threads;
};

static void fifo_push(struct fifo *f, struct node *n)
{
	n->next = NULL;
	if (f->tail)
		f->tail->next = n;
	else
		f->head = n;
	f->tail = n;
	f->len++;
}

static struct node *fifo_pop(struct fifo *f)
{
	struct node *n = f->head;

	if (n == NULL)
		return NULL;
	f->head = n->next;
	if (f->head == NULL)
		f->tail = NULL;
	f->len--;
	return n;
}

static void wake_loop(struct workers *pool)
{
	uint64_t one = 1;

	/* Only fails when the counter would overflow: the loop is awake. */
	if (write(pool->event_fd, &one, sizeof(one)) == -1)
		return;
}

static void *thread_main(void *arg)
{
	struct workers *pool = arg;

	pthread_mutex_lock(&pool->lock);
	for (;;) {
		struct node *n;

		while (!pool->stopping && pool->todo.len == 0)
			pthread_cond_wait(&pool->work, &pool->lock);
		if (pool->stopping && (!pool->finishing || pool->todo.len == 0))
			break;
		n = fifo_pop(&pool->todo);
		pool->running++;
		pthread_mutex_unlock(&pool->lock);
		pool->run(pool->ctx, n->job);
		pthread_mutex_lock(&pool->lock);
		pool->running--;
		fifo_push(&pool->done, n);
		/* Only when the loop has something to do: refill a queue
		 * that runs low (or dry), and take every finished job at
		 * once - not once per job, each a wake-up of its own. */
		if (pool->todo.len <= pool->low_water)
			wake_loop(pool);
	}
	pool->alive--;
	pthread_cond_broadcast(&pool->idle);
	pthread_mutex_unlock(&pool->lock);
	return NULL;
}

int workers_start(struct workers **out, size_t threads, workers_run_fn run,
		  void *ctx, struct error *err)
{
	struct workers *pool = calloc(1, sizeof(*pool));

	if (pool == NULL || threads == 0)
		return error_set(err, ERROR_SETUP, ENOMEM, "worker pool");
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->work, NULL);
	pthread_cond_init(&pool->idle, NULL);
	pool->run = run;
	pool->ctx = ctx;
	pool->low_water = threads;
	pool->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pool->threads = calloc(threads, sizeof(*pool->threads));
	*out = pool;
	if (pool->event_fd == -1 || pool->threads == NULL)
		return error_set(err, ERROR_SETUP, errno, "worker pool");
	for (size_t i = 0; i < threads; i++) {
		if (pthread_create(&pool->threads[i], NULL, thread_main, pool) != 0)
			return error_set(err, ERROR_SETUP, errno, "pthread_create");
		pool->nthreads++;
		pool->alive++;
	}
	return 0;
}

void workers_submit(struct workers *pool, void *job)
{
	struct node *n = malloc(sizeof(*n));

	if (n == NULL)
		abort();
	n->job = job;
	pthread_mutex_lock(&pool->lock);
	fifo_push(&pool->todo, n);
	pthread_cond_signal(&pool->work);
	pthread_mutex_unlock(&pool->lock);
}

int workers_fd(const struct workers *pool)
{
	return pool->event_fd;
}

size_t workers_take_done(struct workers *pool, void **jobs, size_t max)
{
	uint64_t count;
	size_t n = 0;

	if (read(pool->event_fd, &count, sizeof(count)) == -1 && errno != EAGAIN)
		return 0;
	pthread_mutex_lock(&pool->lock);
	while (n < max && pool->done.len > 0) {
		struct node *node = fifo_pop(&pool->done);
		jobs[n++] = node->job;
		free(node);
	}
	if (pool->done.len > 0)
		wake_loop(pool);	/* more than max: come back */
	pthread_mutex_unlock(&pool->lock);
	return n;
}

size_t workers_outstanding(const struct workers *pool)
{
	struct workers *p = (struct workers *)pool;
	size_t n;

	pthread_mutex_lock(&p->lock);
	n = p->todo.len + p->running + p->done.len;
	pthread_mutex_unlock(&p->lock);
	return n;
}

size_t workers_queued(const struct workers *pool)
{
	struct workers *p = (struct workers *)pool;
	size_t n;

	pthread_mutex_lock(&p->lock);
	n = p->todo.len;
	pthread_mutex_unlock(&p->lock);
	return n;
}

static void deadline_to_timespec(int64_t deadline_ms, struct timespec *ts)
{
	struct timespec now_mono, now_real;
	int64_t left;

	clock_gettime(CLOCK_MONOTONIC, &now_mono);
	clock_gettime(CLOCK_REALTIME, &now_real);
	left = deadline_ms - ((int64_t)now_mono.tv_sec * 1000 +
			      now_mono.tv_nsec / 1000000);
	if (left < 0)
		left = 0;
	ts->tv_sec = now_real.tv_sec + left / 1000;
	ts->tv_nsec = now_real.tv_nsec + (left % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static int stop(struct workers *pool, bool finish, int64_t deadline_ms)
{
	struct timespec ts;
	int rc = 0;

	deadline_to_timespec(deadline_ms, &ts);
	pthread_mutex_lock(&pool->lock);
	pool->stopping = true;
	pool->finishing = finish;
	pthread_cond_broadcast(&pool->work);
	while (pool->alive > 0 && rc == 0)
		if (pthread_cond_timedwait(&pool->idle, &pool->lock, &ts) == ETIMEDOUT)
			rc = -1;
	pthread_mutex_unlock(&pool->lock);
	if (rc == -1)
		return -1;
	for (size_t i = 0; i < pool->nthreads; i++)
		pthread_join(pool->threads[i], NULL);
	return 0;
}

int workers_stop(struct workers *pool, int64_t deadline_ms)
{
	return stop(pool, false, deadline_ms);
}

int workers_finish(struct workers *pool, int64_t deadline_ms)
{
	return stop(pool, true, deadline_ms);
}

static void drain(struct fifo *f, void (*free_job)(void *job))
{
	struct node *n;

	while ((n = fifo_pop(f)) != NULL) {
		if (free_job != NULL)
			free_job(n->job);
		free(n);
	}
}

void workers_free(struct workers *pool, void (*free_job)(void *job))
{
	if (pool == NULL)
		return;
	drain(&pool->todo, free_job);
	drain(&pool->done, free_job);
	if (pool->event_fd != -1)
		close(pool->event_fd);
	pthread_mutex_destroy(&pool->lock);
	pthread_cond_destroy(&pool->work);
	pthread_cond_destroy(&pool->idle);
	free(pool->threads);
	free(pool);
}
