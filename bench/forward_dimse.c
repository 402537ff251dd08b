/*
 * forward_dimse.c - throughput of dimse_send (delivery.h) against DCMTK's
 * storescu, both sending the same files to one DCMTK storescp on loopback.
 *
 * Usage: forward_dimse [--files N] [--reps R] [--rows R --cols C]
 *                      [--threads 2,4] [--work DIR] [--dcmtk-nodelay]
 * Built as build/bench/forward_dimse. Makes N small CT files (Explicit VR
 * LE, RxC 16-bit pixels) in WORK, starts `storescp --fork` on a free port
 * (127.0.0.1 only is ever connected to), then in ONE run, interleaving the
 * modes rep by rep (the order alternating):
 *   storescu        all N files in one storescu process, one association
 *   dimse_send      all N files in one call, one association
 *   dimse_send xT   T threads, each one call with N/T files, T associations
 * Each timed run ends when the last response arrived; the peer's folder is
 * emptied between runs (not timed) and must hold N files after each.
 * Prints the median seconds, files/s, and ratios to storescu's median: the
 * machine is shared and noisy, so compare the ratios.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dicomsort/delivery.h"
#include "dimse_fixture.h"

#define CT "1.2.840.10008.5.1.4.1.1.2"
#define EXPLICIT_LE "1.2.840.10008.1.2.1"
#define MAX_MODES 8

/* --dcmtk-nodelay: storescp and storescu run with TCP_NODELAY=1, DCMTK's
 * switch for turning Nagle's algorithm off (off by default). */
static int dcmtk_nodelay;

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "forward_dimse: %s\n", what);
	exit(1);
}

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    getsockname(fd, (struct sockaddr *)&a, &len))
		die("no free port");
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static int listening(int port)
{
	char line[512], want[16];
	FILE *f = fopen("/proc/net/tcp", "r");
	int found = 0;

	snprintf(want, sizeof(want), ":%04X ", port);
	while (f && !found && fgets(line, sizeof(line), f))
		found = strstr(line, want) && strstr(line, " 0A ");
	if (f)
		fclose(f);
	return found;
}

static pid_t start_scp(const char *out, int port)
{
	char p[16];
	pid_t pid;

	snprintf(p, sizeof(p), "%d", port);
	pid = fork();
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		dup2(fd, 1);
		dup2(fd, 2);
		if (dcmtk_nodelay)
			setenv("TCP_NODELAY", "1", 1);
		execlp("storescp", "storescp", "--fork", "-od", out, p, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 750 && !listening(port); i++) {
		struct timespec t = { 0, 20000000 };

		if (waitpid(pid, NULL, WNOHANG) == pid)
			die("storescp exited");
		nanosleep(&t, NULL);
	}
	if (!listening(port))
		die("storescp did not listen");
	return pid;
}

/* Empty the peer's folder; returns how many files it held. */
static int drain(const char *out)
{
	DIR *d = opendir(out);
	struct dirent *e;
	char path[PATH_MAX];
	int n = 0;

	if (!d)
		die("peer folder");
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", out, e->d_name);
		unlink(path);
		n++;
	}
	closedir(d);
	return n;
}

struct job {
	struct dimse_peer peer;
	struct delivery_item *items;
	size_t n;
	int rc;
};

static void *send_job(void *arg)
{
	struct job *j = arg;
	struct error err = ERROR_INIT;

	for (size_t i = 0; i < j->n; i++)
		j->items[i].result = DELIVERY_PENDING;
	j->rc = dimse_send(&j->peer, j->items, j->n, &err);
	for (size_t i = 0; j->rc == 0 && i < j->n; i++)
		if (j->items[i].result != DELIVERY_DONE)
			j->rc = -1;
	if (j->rc)
		fprintf(stderr, "forward_dimse: dimse_send: %s\n", err.msg);
	return NULL;
}

static double run_dimse(const struct dimse_peer *peer,
			struct delivery_item *items, size_t n, int threads)
{
	pthread_t tid[64];
	struct job jobs[64];
	double t0 = now_s();
	size_t per = (n + threads - 1) / threads, at = 0;

	for (int t = 0; t < threads; t++) {
		jobs[t].peer = *peer;
		jobs[t].items = items + at;
		jobs[t].n = at + per > n ? n - at : per;
		at += jobs[t].n;
		if (pthread_create(&tid[t], NULL, send_job, &jobs[t]))
			die("thread");
	}
	for (int t = 0; t < threads; t++) {
		pthread_join(tid[t], NULL);
		if (jobs[t].rc)
			die("a dimse_send failed");
	}
	return now_s() - t0;
}

static double run_storescu(int port, char **paths, size_t n)
{
	char p[16];
	char **argv = calloc(n + 8, sizeof(char *));
	double t0 = now_s();
	pid_t pid;
	int status;

	snprintf(p, sizeof(p), "%d", port);
	argv[0] = "storescu";
	argv[1] = "-aet";
	argv[2] = "DICOMSORTD";
	argv[3] = "-aec";
	argv[4] = "STORESCP";
	argv[5] = "127.0.0.1";
	argv[6] = p;
	memcpy(argv + 7, paths, n * sizeof(char *));
	pid = fork();
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		dup2(fd, 1);
		dup2(fd, 2);
		if (dcmtk_nodelay)
			setenv("TCP_NODELAY", "1", 1);
		execvp("storescu", argv);
		_exit(127);
	}
	waitpid(pid, &status, 0);
	free(argv);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		die("storescu failed");
	return now_s() - t0;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(double), cmp);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
	size_t n = 2000;
	int reps = 5, rows = 64, cols = 64, nthreads[MAX_MODES], nt = 0;
	const char *threads = "2,4";
	char work[PATH_MAX] = "", out[PATH_MAX], *tok, *list;
	struct delivery_item *items;
	char **paths;
	double times[MAX_MODES][64];
	struct dimse_peer peer = { .host = "127.0.0.1", .called_ae = "STORESCP",
				   .calling_ae = "DICOMSORTD" };
	pid_t scp;

	for (int i = 1; i < argc; i += 2) {
		if (!strcmp(argv[i], "--dcmtk-nodelay")) {
			dcmtk_nodelay = 1;
			i--;
		} else if (i + 1 >= argc)
			die("usage: see bench/forward_dimse.c");
		else if (!strcmp(argv[i], "--files"))
			n = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--reps"))
			reps = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--rows"))
			rows = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--cols"))
			cols = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--threads"))
			threads = argv[i + 1];
		else if (!strcmp(argv[i], "--work"))
			snprintf(work, sizeof(work), "%s", argv[i + 1]);
		else
			die("usage: forward_dimse [--files N] [--reps R] [--rows R "
			    "--cols C] [--threads 2,4] [--work DIR]");
	}
	if (n == 0 || reps < 1 || reps > 64)
		die("bad --files or --reps");
	list = strdup(threads);
	for (tok = strtok(list, ","); tok && nt < MAX_MODES - 2; tok = strtok(NULL, ","))
		if (atoi(tok) > 1 && atoi(tok) <= 64)
			nthreads[nt++] = atoi(tok);
	free(list);
	if (!*work) {
		snprintf(work, sizeof(work), "/tmp/forward_dimse.XXXXXX");
		if (!mkdtemp(work))
			die("mkdtemp");
	}
	mkdir(work, 0700);
	snprintf(out, sizeof(out), "%s/peer", work);
	mkdir(out, 0700);
	items = calloc(n, sizeof(*items));
	paths = calloc(n, sizeof(char *));
	for (size_t i = 0; i < n; i++) {
		char path[PATH_MAX];

		snprintf(path, sizeof(path), "%s/f%05zu.dcm", work, i);
		paths[i] = strdup(path);
		items[i].path = paths[i];
		snprintf(items[i].sop_class_uid, DELIVERY_UID_MAX, CT);
		snprintf(items[i].sop_instance_uid, DELIVERY_UID_MAX,
			 "1.2.826.0.1.3680043.10.7613.55.%zu", i);
		snprintf(items[i].transfer_syntax_uid, DELIVERY_UID_MAX, EXPLICIT_LE);
		if (access(path, R_OK) != 0 &&
		    fixture_make(path, CT, items[i].sop_instance_uid, EXPLICIT_LE,
				 (unsigned)i, rows, cols) != 0)
			die("cannot make the files");
	}
	peer.port = free_port();
	scp = start_scp(out, peer.port);
	drain(out);
	printf("forward_dimse: %zu files of %dx%d 16-bit (Explicit VR LE), "
	       "storescp --fork on 127.0.0.1, %d interleaved reps, work %s, "
	       "storescp/storescu TCP_NODELAY=%s\n", n, rows, cols, reps, work,
	       dcmtk_nodelay ? "1" : "unset (DCMTK's default: Nagle on)");
	fflush(stdout);
	for (int r = 0; r < reps; r++) {
		int modes = 2 + nt;

		for (int k = 0; k < modes; k++) {
			/* Alternate the order rep by rep. */
			int m = r % 2 ? modes - 1 - k : k;
			double t;

			if (m == 0)
				t = run_storescu(peer.port, paths, n);
			else if (m == 1)
				t = run_dimse(&peer, items, n, 1);
			else
				t = run_dimse(&peer, items, n, nthreads[m - 2]);
			times[m][r] = t;
			if ((size_t)drain(out) != n)
				die("the peer does not hold every file");
		}
	}
	{
		double base = median(times[0], reps);

		printf("%-22s %10s %10s %12s\n", "mode", "median s", "files/s",
		       "vs storescu");
		printf("%-22s %10.3f %10.0f %11.2fx\n", "storescu (1 assoc)", base,
		       n / base, 1.0);
		for (int m = 1; m < 2 + nt; m++) {
			double t = median(times[m], reps);
			char name[64];

			if (m == 1)
				snprintf(name, sizeof(name), "dimse_send (1 assoc)");
			else
				snprintf(name, sizeof(name), "dimse_send x%d assoc",
					 nthreads[m - 2]);
			printf("%-22s %10.3f %10.0f %11.2fx\n", name, t, n / t, base / t);
		}
	}
	kill(scp, SIGTERM);
	waitpid(scp, NULL, 0);
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
	free(items);
	return 0;
}
