/* test_workers.c - the daemon's thread pool: every job runs once and comes
 * back through the eventfd; stop waits for running jobs within a bound,
 * finish runs the queued ones too. */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dicomsort/workers.h"

struct job {
	int id;
	atomic_int runs;
};

static void run(void *ctx, void *p)
{
	struct job *job = p;

	(void)ctx;
	atomic_fetch_add(&job->runs, 1);
}

static void slow_run(void *ctx, void *p)
{
	(void)ctx;
	(void)p;
	nanosleep(&(struct timespec){ 0, 300 * 1000 * 1000 }, NULL);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void every_job_runs_once_and_comes_back(void **state)
{
	enum { N = 1000 };
	struct error err = ERROR_INIT;
	struct workers *pool;
	struct job *jobs = calloc(N, sizeof(*jobs));
	size_t back = 0;

	(void)state;
	assert_int_equal(workers_start(&pool, 4, run, NULL, &err), 0);
	for (int i = 0; i < N; i++)
		workers_submit(pool, &jobs[i]);
	while (back < N) {
		struct pollfd pfd = { workers_fd(pool), POLLIN, 0 };
		void *done[64];

		assert_int_equal(poll(&pfd, 1, 5000), 1);
		back += workers_take_done(pool, done, 64);
	}
	assert_int_equal(workers_outstanding(pool), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(atomic_load(&jobs[i].runs), 1);
	assert_int_equal(workers_stop(pool, now_ms() + 5000), 0);
	workers_free(pool, NULL);
	free(jobs);
}

static void stop_waits_for_running_jobs_within_bound(void **state)
{
	struct error err = ERROR_INIT;
	struct workers *pool;
	int dummy[8];
	int64_t start = now_ms();

	(void)state;
	assert_int_equal(workers_start(&pool, 2, slow_run, NULL, &err), 0);
	for (int i = 0; i < 8; i++)
		workers_submit(pool, &dummy[i]);
	nanosleep(&(struct timespec){ 0, 50 * 1000 * 1000 }, NULL);
	assert_int_equal(workers_stop(pool, now_ms() + 5000), 0);
	/* The two running jobs finished; the six queued ones never started. */
	assert_true(now_ms() - start < 1500);
	workers_free(pool, NULL);
}

/* The daemon's disposers at a stop: no committed file's source may be
 * left for the next start, so every queued job runs before they end. */
static void finish_runs_every_queued_job(void **state)
{
	enum { N = 200 };
	struct error err = ERROR_INIT;
	struct workers *pool;
	struct job *jobs = calloc(N, sizeof(*jobs));
	void *done[N];
	size_t back = 0, n;

	(void)state;
	assert_int_equal(workers_start(&pool, 3, run, NULL, &err), 0);
	for (int i = 0; i < N; i++)
		workers_submit(pool, &jobs[i]);
	assert_int_equal(workers_finish(pool, now_ms() + 30000), 0);
	while ((n = workers_take_done(pool, done + back, N - back)) > 0)
		back += n;
	assert_int_equal(back, N);
	for (int i = 0; i < N; i++)
		assert_int_equal(atomic_load(&jobs[i].runs), 1);
	workers_free(pool, NULL);
	free(jobs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_job_runs_once_and_comes_back),
		cmocka_unit_test(stop_waits_for_running_jobs_within_bound),
		cmocka_unit_test(finish_runs_every_queued_job),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
