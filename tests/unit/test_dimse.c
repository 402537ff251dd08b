/* test_dimse.c - the DICOM network adapter (delivery.h: dimse_send,
 * dimse_echo) against real DCMTK storescp processes started here on free
 * loopback ports (traffic to 127.0.0.1 only, every wait bounded, each
 * storescp killed in teardown): mixed transfer syntaxes arriving with the
 * same pixels, TLS with a CA, client certificate and host name checks,
 * peers down, refusing, aborting, rejecting SOP classes, out of resources,
 * conversion only when allowed, C-ECHO, and no PHI in any text.
 * Files go below $DICOMSORT_TEST_TMP (or /tmp). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dicomsort/delivery.h"
#include "dimse_fixture.h"

#define EXPLICIT_LE "1.2.840.10008.1.2.1"
#define IMPLICIT_LE "1.2.840.10008.1.2"
#define RLE "1.2.840.10008.1.2.5"
#define JPEG_LOSSLESS "1.2.840.10008.1.2.4.70"
#define CT "1.2.840.10008.5.1.4.1.1.2"
#define MR "1.2.840.10008.5.1.4.1.1.4"
#define SC "1.2.840.10008.5.1.4.1.1.7"
#define UID_ROOT "1.2.826.0.1.3680043.10.7613.77."

static char dir[PATH_MAX];

static void pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pathf(char *out, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, PATH_MAX, fmt, ap);
	va_end(ap);
	assert_true(n > 0 && n < PATH_MAX);
}

static long long now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&t, NULL);
}

static int run(const char *cmd)
{
	int rc = system(cmd);

	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* ---- storescp ---- */

struct scp {
	pid_t pid;
	int port;
	char out[PATH_MAX];	/* its -od folder */
	char log[PATH_MAX];
};

/* A port nobody listens on right now. */
static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int port;

	assert_true(fd >= 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* Is something listening on port (IPv4 or IPv6, any address)? */
static int listening(int port)
{
	static const char *const tables[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	char line[512], want[16];
	int found = 0;

	snprintf(want, sizeof(want), ":%04X ", port);
	for (size_t i = 0; i < 2 && !found; i++) {
		FILE *f = fopen(tables[i], "r");

		if (!f)
			continue;
		while (!found && fgets(line, sizeof(line), f)) {
			char *local = strchr(line, ':');

			/* "sl: local rem st": local ends in :PORT, st 0A */
			if (local && (local = strstr(local + 1, want)) &&
			    strstr(local, " 0A "))
				found = strlen(line) > 0;
		}
		fclose(f);
	}
	return found;
}

/* Running storescp processes, so that a failed assertion (which leaves
 * the test by longjmp) never leaves one behind. */
static pid_t running[8];

static void track(pid_t pid, pid_t replace)
{
	for (size_t i = 0; i < 8; i++)
		if (running[i] == replace) {
			running[i] = pid;
			return;
		}
}

static void reap(pid_t pid)
{
	long long end = now_ms() + 5000;

	kill(pid, SIGTERM);
	while (waitpid(pid, NULL, WNOHANG) == 0) {
		if (now_ms() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			break;
		}
		sleep_ms(10);
	}
}

static void scp_kill(struct scp *s)
{
	if (s->pid <= 0)
		return;
	reap(s->pid);
	track(0, s->pid);
	s->pid = 0;
}

static int kill_all(void **state)
{
	(void)state;
	for (size_t i = 0; i < 8; i++)
		if (running[i] > 0) {
			reap(running[i]);
			running[i] = 0;
		}
	return 0;
}

/* PROG [args...] [-od OUT] PORT, listening when this returns. */
static void spawn(struct scp *s, const char *name, const char *prog,
		  const char *const args[], int od)
{
	pathf(s->out, "%s/%s-in", dir, name);
	pathf(s->log, "%s/%s.log", dir, name);
	assert_true(mkdir(s->out, 0700) == 0 || errno == EEXIST);
	for (int attempt = 0; attempt < 5; attempt++) {
		const char *argv[40];
		char port[16];
		size_t n = 0;
		long long end;

		s->port = free_port();
		snprintf(port, sizeof(port), "%d", s->port);
		argv[n++] = prog;
		for (size_t i = 0; args && args[i]; i++)
			argv[n++] = args[i];
		if (od) {
			argv[n++] = "-od";
			argv[n++] = s->out;
		}
		argv[n++] = port;
		argv[n] = NULL;
		s->pid = fork();
		assert_true(s->pid >= 0);
		if (s->pid == 0) {
			int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0600);

			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
			execvp(prog, (char *const *)argv);
			_exit(127);
		}
		track(s->pid, 0);
		end = now_ms() + 15000;
		while (now_ms() < end) {
			if (listening(s->port))
				return;
			if (waitpid(s->pid, NULL, WNOHANG) == s->pid)
				break;	/* the port was taken: another one */
			sleep_ms(20);
		}
		scp_kill(s);
	}
	fail_msg("%s did not start (see %s)", prog, s->log);
}

static void scp_start(struct scp *s, const char *name, const char *const args[])
{
	spawn(s, name, "storescp", args, 1);
}

/* The file storescp stored for this SOP Instance UID, waited for. */
static int scp_find(const struct scp *s, const char *sop_instance,
		    char *path)
{
	long long end = now_ms() + 10000;

	do {
		DIR *d = opendir(s->out);
		struct dirent *e;

		assert_non_null(d);
		while ((e = readdir(d))) {
			const char *dot = strchr(e->d_name, '.');

			if (dot && strcmp(dot + 1, sop_instance) == 0) {
				pathf(path, "%s/%s", s->out, e->d_name);
				closedir(d);
				return 0;
			}
		}
		closedir(d);
		sleep_ms(20);
	} while (now_ms() < end);
	return -1;
}

static int scp_count(const struct scp *s)
{
	DIR *d = opendir(s->out);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* ---- files and items ---- */

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}


struct batch {
	struct delivery_item items[8];
	char paths[8][PATH_MAX];
	size_t n;
};

static struct delivery_item *add(struct batch *b, const char *sop_class,
				 const char *ts)
{
	struct delivery_item *it = &b->items[b->n];
	static unsigned serial;
	unsigned seed = ++serial;

	assert_true(b->n < 8);
	memset(it, 0, sizeof(*it));
	pathf(b->paths[b->n], "%s/send-%u.dcm", dir, seed);
	snprintf(it->sop_class_uid, DELIVERY_UID_MAX, "%s", sop_class);
	snprintf(it->sop_instance_uid, DELIVERY_UID_MAX, UID_ROOT "%d.%u",
		 (int)getpid(), seed);
	snprintf(it->transfer_syntax_uid, DELIVERY_UID_MAX, "%s", ts);
	assert_int_equal(fixture_make(b->paths[b->n], sop_class,
				      it->sop_instance_uid, ts, seed, 16, 16), 0);
	it->path = b->paths[b->n];
	b->n++;
	return it;
}

static struct dimse_peer peer_at(int port)
{
	struct dimse_peer p = {
		.host = "127.0.0.1", .port = port, .called_ae = "STORESCP",
		.calling_ae = "DICOMSORTD", .connect_timeout_s = 5,
		.acse_timeout_s = 20, .dimse_timeout_s = 30,
	};

	return p;
}

/* No text we produce may carry a value of the data set. */
static void no_phi(const char *text)
{
	assert_null(strstr(text, "SECRET"));
	assert_null(strstr(text, dir));
}

/* Arrived, in the same syntax, with the same decoded pixels. */
static void arrived_same(const struct scp *s, const struct delivery_item *it)
{
	char got[PATH_MAX], md5a[33], md5b[33], tsa[65], tsb[65];

	assert_int_equal(scp_find(s, it->sop_instance_uid, got), 0);
	assert_int_equal(fixture_pixels(it->path, md5a, tsa), 0);
	assert_int_equal(fixture_pixels(got, md5b, tsb), 0);
	assert_string_equal(md5a, md5b);
	assert_string_equal(tsa, tsb);
}

/* ---- tests ---- */

static void test_mixed_syntaxes(void **state)
{
	static const char *const args[] = { "+xa", NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	scp_start(&s, "mixed", args);
	add(&b, CT, EXPLICIT_LE);
	add(&b, CT, EXPLICIT_LE);
	add(&b, CT, IMPLICIT_LE);
	add(&b, MR, RLE);
	add(&b, CT, JPEG_LOSSLESS);
	add(&b, SC, EXPLICIT_LE);
	p = peer_at(s.port);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	for (size_t i = 0; i < b.n; i++) {
		assert_int_equal(b.items[i].result, DELIVERY_DONE);
		assert_int_equal(b.items[i].status, 0);
		arrived_same(&s, &b.items[i]);
	}
	/* Idempotent at the peer: the same batch again is fine. */
	for (size_t i = 0; i < b.n; i++)
		b.items[i].result = DELIVERY_PENDING;
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	for (size_t i = 0; i < b.n; i++)
		assert_int_equal(b.items[i].result, DELIVERY_DONE);
	scp_kill(&s);
}

static void test_echo(void **state)
{
	static const char *const refuse[] = { "--refuse", NULL };
	struct scp s = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	scp_start(&s, "echo", NULL);
	p = peer_at(s.port);
	assert_int_equal(dimse_echo(&p, &err), 0);
	scp_kill(&s);
	/* Nobody there any more. */
	assert_int_equal(dimse_echo(&p, &err), -1);
	assert_int_equal(err.kind, ERROR_TRANSIENT);
	assert_non_null(strstr(err.msg, "cannot connect"));
	scp_start(&s, "echo-refuse", refuse);
	p = peer_at(s.port);
	error_clear(&err);
	assert_int_equal(dimse_echo(&p, &err), -1);
	assert_non_null(strstr(err.msg, "rejected"));
	scp_kill(&s);
}

static void test_peer_down(void **state)
{
	struct batch b = { 0 };
	struct dimse_peer p = peer_at(free_port());
	struct error err = ERROR_INIT;
	long long start = now_ms();

	(void)state;
	add(&b, CT, EXPLICIT_LE);
	add(&b, MR, RLE);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), -1);
	assert_int_equal(err.kind, ERROR_TRANSIENT);
	assert_non_null(strstr(err.msg, "127.0.0.1"));
	no_phi(err.msg);
	for (size_t i = 0; i < b.n; i++)
		assert_int_equal(b.items[i].result, DELIVERY_PENDING);
	assert_true(now_ms() - start < 10000);
}

/* A peer whose backlog is full never completes the TCP handshake: given
 * up after the connect timeout. One that connects but never answers the
 * association request: given up after the ACSE timeout. Both on loopback. */
static void test_silent_peers(void **state)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int lfd = socket(AF_INET, SOCK_STREAM, 0), extra[8];
	struct dimse_peer p;
	struct error err = ERROR_INIT;
	long long start;

	(void)state;
	assert_true(lfd >= 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
	assert_int_equal(listen(lfd, 8), 0);
	p = peer_at(ntohs(a.sin_port));
	p.acse_timeout_s = 1;
	start = now_ms();
	assert_int_equal(dimse_echo(&p, &err), -1);
	assert_int_equal(err.kind, ERROR_TRANSIENT);
	assert_true(now_ms() - start < 8000);

	/* A second listener: listen(0) queues one connection, the fillers
	 * take it, and the kernel drops every later SYN while nobody
	 * accepts. Nothing ever blocks here: the fillers do not wait. */
	close(lfd);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_port = 0;
	assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
	assert_int_equal(listen(lfd, 0), 0);
	for (int i = 0; i < 8; i++) {
		extra[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		(void)!connect(extra[i], (struct sockaddr *)&a, sizeof(a));
	}
	sleep_ms(200);
	p = peer_at(ntohs(a.sin_port));
	p.connect_timeout_s = 1;
	start = now_ms();
	error_clear(&err);
	assert_int_equal(dimse_echo(&p, &err), -1);
	assert_true(now_ms() - start < 8000);
	assert_non_null(strstr(err.msg, "127.0.0.1"));
	for (int i = 0; i < 8; i++)
		close(extra[i]);
	close(lfd);
}

/* A peer that takes longer than the DIMSE timeout to answer a C-STORE:
 * the batch is retried, the call returns. */
static void test_dimse_timeout(void **state)
{
	static const char *const args[] = { "--sleep-during", "30", NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;
	long long start = now_ms();

	(void)state;
	scp_start(&s, "slow", args);
	add(&b, CT, EXPLICIT_LE);
	p = peer_at(s.port);
	p.dimse_timeout_s = 2;
	p.acse_timeout_s = 3;	/* DCMTK's abort waits for the close */
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), -1);
	assert_int_equal(b.items[0].result, DELIVERY_PENDING);
	assert_true(now_ms() - start < 20000);
	scp_kill(&s);
}

static void test_association_refused(void **state)
{
	static const char *const args[] = { "--refuse", NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	scp_start(&s, "refuse", args);
	add(&b, CT, EXPLICIT_LE);
	p = peer_at(s.port);
	p.called_ae = "NOT-THE-PACS";
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), -1);
	assert_non_null(strstr(err.msg, "association rejected"));
	assert_non_null(strstr(err.msg, "NOT-THE-PACS"));
	assert_int_equal(b.items[0].result, DELIVERY_PENDING);
	assert_int_equal(scp_count(&s), 0);
	scp_kill(&s);
}

/* A peer that checks the called AE title (storescp does not: DCMTK's
 * dcmqrscp does) refuses the association: the batch is retried. */
static void test_wrong_called_ae(void **state)
{
	char cfg[PATH_MAX], text[2 * PATH_MAX];
	const char *args[] = { "-c", cfg, NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	pathf(cfg, "%s/dcmqrscp.cfg", dir);
	pathf(s.out, "%s/qr-in", dir);
	assert_true(mkdir(s.out, 0700) == 0 || errno == EEXIST);
	snprintf(text, sizeof(text),
		 "NetworkTCPPort = 104\nMaxPDUSize = 16384\n"
		 "MaxAssociations = 4\nHostTable BEGIN\nHostTable END\n"
		 "VendorTable BEGIN\nVendorTable END\nAETable BEGIN\n"
		 "PACS %s RW (10, 64mb) ANY\nAETable END\n", s.out);
	write_text(cfg, text);
	spawn(&s, "qr", "dcmqrscp", args, 0);
	add(&b, CT, EXPLICIT_LE);
	p = peer_at(s.port);
	p.called_ae = "NOT-THE-PACS";
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), -1);
	assert_int_equal(err.kind, ERROR_TRANSIENT);
	assert_non_null(strstr(err.msg, "association rejected"));
	assert_non_null(strstr(err.msg, "Called AE Title Not Recognized"));
	assert_int_equal(b.items[0].result, DELIVERY_PENDING);
	error_clear(&err);
	assert_int_equal(dimse_echo(&p, &err), -1);
	/* The right one: the same peer answers. */
	p.called_ae = "PACS";
	assert_int_equal(dimse_echo(&p, &err), 0);
	scp_kill(&s);
}

/* The peer aborts after the first C-STORE request: the batch is retried
 * (and the process survives the write to a closed socket). */
static void test_peer_aborts(void **state)
{
	static const char *const args[] = { "--abort-after", NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	scp_start(&s, "abort", args);
	add(&b, CT, EXPLICIT_LE);
	add(&b, CT, EXPLICIT_LE);
	p = peer_at(s.port);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), -1);
	assert_int_equal(err.kind, ERROR_TRANSIENT);
	assert_int_equal(b.items[0].result, DELIVERY_PENDING);
	assert_int_equal(b.items[1].result, DELIVERY_PENDING);
	no_phi(err.msg);
	scp_kill(&s);
}

/* A peer configured for CT only: the MR is rejected with its reason,
 * the CT beside it delivered. */
static void test_sop_class_rejected(void **state)
{
	char cfg[PATH_MAX];
	const char *args[] = { "-xf", cfg, "CTOnly", NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	pathf(cfg, "%s/ctonly.cfg", dir);
	write_text(cfg,
		   "[[TransferSyntaxes]]\n[Uncompressed]\n"
		   "TransferSyntax1 = LocalEndianExplicit\n"
		   "TransferSyntax2 = LittleEndianImplicit\n"
		   "[[PresentationContexts]]\n[CTOnlyContexts]\n"
		   "PresentationContext1 = VerificationSOPClass\\Uncompressed\n"
		   "PresentationContext2 = CTImageStorage\\Uncompressed\n"
		   "[[Profiles]]\n[CTOnly]\n"
		   "PresentationContexts = CTOnlyContexts\n");
	scp_start(&s, "ctonly", args);
	add(&b, CT, EXPLICIT_LE);
	add(&b, MR, EXPLICIT_LE);
	add(&b, CT, IMPLICIT_LE);
	p = peer_at(s.port);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	assert_int_equal(b.items[0].result, DELIVERY_DONE);
	assert_int_equal(b.items[2].result, DELIVERY_DONE);
	assert_int_equal(b.items[1].result, DELIVERY_REJECTED);
	assert_non_null(strstr(b.items[1].reason, MR));
	assert_non_null(strstr(b.items[1].reason, "does not accept"));
	no_phi(b.items[1].reason);
	arrived_same(&s, &b.items[0]);
	assert_int_equal(scp_count(&s), 2);

	/* Only MR in the batch: rejected the same way, whatever else the
	 * batch holds. */
	b.n = 0;
	add(&b, MR, IMPLICIT_LE);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	assert_int_equal(b.items[0].result, DELIVERY_REJECTED);
	assert_non_null(strstr(b.items[0].reason, "does not accept"));
	scp_kill(&s);
}

/* A compressed file at a peer that takes uncompressed only: rejected
 * unless the destination allows conversion, then decoded and sent. */
static void test_conversion(void **state)
{
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;
	char got[PATH_MAX], md5a[33], md5b[33], tsa[65], tsb[65];

	(void)state;
	scp_start(&s, "uncompr", NULL);
	add(&b, CT, RLE);
	add(&b, CT, JPEG_LOSSLESS);
	p = peer_at(s.port);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	for (size_t i = 0; i < b.n; i++) {
		assert_int_equal(b.items[i].result, DELIVERY_REJECTED);
		assert_non_null(strstr(b.items[i].reason, "not allowed"));
		assert_non_null(strstr(b.items[i].reason,
				       b.items[i].transfer_syntax_uid));
		b.items[i].result = DELIVERY_PENDING;
	}
	assert_int_equal(scp_count(&s), 0);
	p.allow_conversion = 1;
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	for (size_t i = 0; i < b.n; i++) {
		assert_int_equal(b.items[i].result, DELIVERY_DONE);
		assert_int_equal(scp_find(&s, b.items[i].sop_instance_uid, got), 0);
		assert_int_equal(fixture_pixels(b.items[i].path, md5a, tsa), 0);
		assert_int_equal(fixture_pixels(got, md5b, tsb), 0);
		assert_string_equal(md5a, md5b);
		assert_true(strcmp(tsb, EXPLICIT_LE) == 0 ||
			    strcmp(tsb, IMPLICIT_LE) == 0);
	}
	scp_kill(&s);
}

/* The peer cannot store (its folder is gone): A7xx, out of resources,
 * is a retry, not a rejection. */
static void test_out_of_resources(void **state)
{
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	scp_start(&s, "full", NULL);
	assert_int_equal(rmdir(s.out), 0);
	add(&b, CT, EXPLICIT_LE);
	p = peer_at(s.port);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	assert_int_equal(b.items[0].result, DELIVERY_RETRY);
	assert_int_equal(b.items[0].status & 0xFF00, 0xA700);
	assert_non_null(strstr(b.items[0].reason, "0xA7"));
	scp_kill(&s);
}

/* A data set that is not what it is sent as (an MR announced as CT):
 * the peer's A9xx/Cxxx is a rejection with the status as reason. */
static void test_data_set_error(void **state)
{
	static const char *const args[] = { "+xa", NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;
	struct delivery_item *it;

	(void)state;
	scp_start(&s, "mismatch", args);
	it = add(&b, MR, EXPLICIT_LE);
	snprintf(it->sop_class_uid, DELIVERY_UID_MAX, "%s", CT);
	add(&b, CT, EXPLICIT_LE);
	p = peer_at(s.port);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	assert_int_equal(b.items[0].result, DELIVERY_REJECTED);
	assert_true((b.items[0].status & 0xF000) == 0xA000 ||
		    (b.items[0].status & 0xF000) == 0xC000);
	assert_non_null(strstr(b.items[0].reason, "C-STORE status 0x"));
	no_phi(b.items[0].reason);
	assert_int_equal(b.items[1].result, DELIVERY_DONE);
	scp_kill(&s);
}

/* Unreadable or cut files are rejected; the batch goes on. */
static void test_bad_files(void **state)
{
	static const char *const args[] = { "+xa", NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;
	struct stat st;

	(void)state;
	scp_start(&s, "bad", args);
	add(&b, CT, EXPLICIT_LE);
	add(&b, CT, EXPLICIT_LE);
	add(&b, CT, EXPLICIT_LE);
	add(&b, CT, EXPLICIT_LE);
	assert_int_equal(unlink(b.paths[0]), 0);
	/* Cut inside the pixel data, after the header. */
	assert_int_equal(stat(b.paths[1], &st), 0);
	assert_int_equal(truncate(b.paths[1], st.st_size - 100), 0);
	write_text(b.paths[2], "not DICOM at all\n");
	p = peer_at(s.port);
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(b.items[i].result, DELIVERY_REJECTED);
		no_phi(b.items[i].reason);
	}
	assert_int_equal(b.items[3].result, DELIVERY_DONE);
	arrived_same(&s, &b.items[3]);
	scp_kill(&s);
}

/* The lowest descriptor number free now. */
static int lowest_free_fd(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	close(fd);
	return fd;
}

/* Out of file descriptors when a file is loaded for sending: the file is
 * fine, the machine is not - a retry, never a rejection (a rejected file
 * would go to rejected/ and never reach the peer). */
static void test_no_descriptor_for_the_file(void **state)
{
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;
	struct rlimit old, tight;
	int rc;

	(void)state;
	scp_start(&s, "nofd", NULL);
	add(&b, CT, EXPLICIT_LE);
	p = peer_at(s.port);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	/* Room for the association's socket, not for the file. */
	tight = old;
	tight.rlim_cur = (rlim_t)lowest_free_fd() + 1;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &tight), 0);
	rc = dimse_send(&p, b.items, b.n, &err);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	if (rc == -1) {
		/* The association itself found no descriptor: also a retry. */
		assert_int_equal(b.items[0].result, DELIVERY_PENDING);
	} else {
		assert_int_equal(b.items[0].result, DELIVERY_RETRY);
		assert_non_null(strstr(b.items[0].reason, "could not be opened"));
		no_phi(b.items[0].reason);
	}
	/* With descriptors back, the same file goes through. */
	b.items[0].result = DELIVERY_PENDING;
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	assert_int_equal(b.items[0].result, DELIVERY_DONE);
	arrived_same(&s, &b.items[0]);
	scp_kill(&s);
}

/* More SOP classes than one association has contexts for (2 each, 128 at
 * most): sent over as many associations as needed, all delivered. */
static void test_many_sop_classes(void **state)
{
	static const char *const args[] = { "-pm", NULL };
	enum { N = 70 };
	struct scp s = { 0 };
	struct delivery_item *items = calloc(N, sizeof(*items));
	char (*paths)[PATH_MAX] = calloc(N, PATH_MAX);
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	assert_non_null(items);
	assert_non_null(paths);
	scp_start(&s, "many", args);
	for (int i = 0; i < N; i++) {
		pathf(paths[i], "%s/many-%d.dcm", dir, i);
		snprintf(items[i].sop_class_uid, DELIVERY_UID_MAX,
			 UID_ROOT "88.%d", i);
		snprintf(items[i].sop_instance_uid, DELIVERY_UID_MAX,
			 UID_ROOT "89.%d.%d", (int)getpid(), i);
		snprintf(items[i].transfer_syntax_uid, DELIVERY_UID_MAX,
			 EXPLICIT_LE);
		assert_int_equal(fixture_make(paths[i], items[i].sop_class_uid,
					      items[i].sop_instance_uid,
					      EXPLICIT_LE, i, 8, 8), 0);
		items[i].path = paths[i];
	}
	p = peer_at(s.port);
	assert_int_equal(dimse_send(&p, items, N, &err), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(items[i].result, DELIVERY_DONE);
	assert_int_equal(scp_count(&s), N);
	scp_kill(&s);
	free(items);
	free(paths);
}

/* Calls on several threads at once, each its own association. */
struct job {
	struct dimse_peer peer;
	struct batch b;
	int rc;
};

static void *send_job(void *arg)
{
	struct job *j = arg;
	struct error err = ERROR_INIT;

	j->rc = dimse_send(&j->peer, j->b.items, j->b.n, &err);
	return NULL;
}

static void test_threads(void **state)
{
	static const char *const args[] = { "--fork", "+xa", NULL };
	enum { T = 4 };
	struct scp s = { 0 };
	struct job *jobs = calloc(T, sizeof(*jobs));
	pthread_t tid[T];

	(void)state;
	assert_non_null(jobs);
	scp_start(&s, "threads", args);
	for (int t = 0; t < T; t++) {
		jobs[t].peer = peer_at(s.port);
		add(&jobs[t].b, CT, EXPLICIT_LE);
		add(&jobs[t].b, MR, RLE);
		add(&jobs[t].b, CT, IMPLICIT_LE);
	}
	for (int t = 0; t < T; t++)
		assert_int_equal(pthread_create(&tid[t], NULL, send_job, &jobs[t]), 0);
	for (int t = 0; t < T; t++)
		pthread_join(tid[t], NULL);
	for (int t = 0; t < T; t++) {
		assert_int_equal(jobs[t].rc, 0);
		for (size_t i = 0; i < jobs[t].b.n; i++) {
			assert_int_equal(jobs[t].b.items[i].result, DELIVERY_DONE);
			arrived_same(&s, &jobs[t].b.items[i]);
		}
	}
	scp_kill(&s);
	free(jobs);
}

/* ---- TLS ---- */

static char ca[PATH_MAX], srv_key[PATH_MAX], srv_pem[PATH_MAX],
	    cli_key[PATH_MAX], cli_pem[PATH_MAX], other_ca[PATH_MAX],
	    wrong_key[PATH_MAX], wrong_pem[PATH_MAX];

/* A CA, a server certificate for 127.0.0.1, one for another name, a
 * client certificate, and an unrelated CA. */
static void make_pki(void)
{
	char cmd[8 * PATH_MAX];

	pathf(ca, "%s/ca.pem", dir);
	pathf(srv_key, "%s/srv.key", dir);
	pathf(srv_pem, "%s/srv.pem", dir);
	pathf(cli_key, "%s/cli.key", dir);
	pathf(cli_pem, "%s/cli.pem", dir);
	pathf(other_ca, "%s/other-ca.pem", dir);
	pathf(wrong_key, "%s/wrong.key", dir);
	pathf(wrong_pem, "%s/wrong.pem", dir);
	snprintf(cmd, sizeof(cmd),
		 "set -e; cd '%s'; exec >pki.log 2>&1\n"
		 "req() { openssl req -newkey rsa:2048 -nodes -keyout $1.key "
		 "-out $1.csr -subj /CN=$2; }\n"
		 "sign() { printf '%%s\\n' \"$2\" >$1.ext; openssl x509 -req "
		 "-in $1.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
		 "-out $1.pem -extfile $1.ext; }\n"
		 "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key "
		 "-out ca.pem -days 2 -subj /CN=test-ca\n"
		 "openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key "
		 "-out other-ca.pem -days 2 -subj /CN=other-ca\n"
		 "req srv 127.0.0.1; sign srv subjectAltName=IP:127.0.0.1\n"
		 "req wrong elsewhere; sign wrong subjectAltName=DNS:elsewhere.example\n"
		 "req cli dicomsortd; sign cli extendedKeyUsage=clientAuth\n",
		 dir);
	assert_int_equal(run(cmd), 0);
}

static void test_tls(void **state)
{
	const char *args[] = { "+tls", srv_key, srv_pem, "+cf", ca, "-rc", NULL };
	const char *wrong[] = { "+tls", wrong_key, wrong_pem, "+cf", ca, "-ic",
				NULL };
	struct scp s = { 0 };
	struct batch b = { 0 };
	struct dimse_peer p;
	struct error err = ERROR_INIT;

	(void)state;
	make_pki();
	scp_start(&s, "tls", args);
	add(&b, CT, EXPLICIT_LE);
	add(&b, MR, IMPLICIT_LE);
	p = peer_at(s.port);
	p.tls = 1;
	p.tls_verify = 1;
	p.tls_ca_file = ca;
	p.tls_cert_file = cli_pem;
	p.tls_key_file = cli_key;
	assert_int_equal(dimse_send(&p, b.items, b.n, &err), 0);
	for (size_t i = 0; i < b.n; i++) {
		assert_int_equal(b.items[i].result, DELIVERY_DONE);
		arrived_same(&s, &b.items[i]);
	}
	assert_int_equal(dimse_echo(&p, &err), 0);

	/* Plain TCP to a TLS peer: no association, retried. */
	p.tls = 0;
	assert_int_equal(dimse_echo(&p, &err), -1);
	/* A peer whose certificate our CA did not sign. */
	p.tls = 1;
	p.tls_ca_file = other_ca;
	assert_int_equal(dimse_echo(&p, &err), -1);
	/* Without our client certificate: the peer requires one. */
	p.tls_ca_file = ca;
	p.tls_cert_file = NULL;
	p.tls_key_file = NULL;
	assert_int_equal(dimse_echo(&p, &err), -1);
	/* A CA file that is not there: a setup error. */
	p.tls_ca_file = "/nonexistent/ca.pem";
	assert_int_equal(dimse_echo(&p, &err), -1);
	assert_int_equal(err.kind, ERROR_SETUP);
	scp_kill(&s);

	/* A certificate from our CA, but for another host name. */
	scp_start(&s, "tls-wrong", wrong);
	p = peer_at(s.port);
	p.tls = 1;
	p.tls_verify = 1;
	p.tls_ca_file = ca;
	assert_int_equal(dimse_echo(&p, &err), -1);
	/* Verification off (an admin's explicit choice): accepted. */
	p.tls_verify = 0;
	assert_int_equal(dimse_echo(&p, &err), 0);
	scp_kill(&s);
}

static void test_bad_peer_config(void **state)
{
	struct dimse_peer p = peer_at(104);
	struct error err = ERROR_INIT;

	(void)state;
	p.called_ae = "AN-AE-TITLE-LONGER-THAN-16";
	assert_int_equal(dimse_echo(&p, &err), -1);
	assert_int_equal(err.kind, ERROR_SETUP);
	p = peer_at(0);
	assert_int_equal(dimse_echo(&p, &err), -1);
	assert_int_equal(err.kind, ERROR_SETUP);
}

static int setup_dir(void **state)
{
	const char *base = getenv("DICOMSORT_TEST_TMP");

	(void)state;
	if (!base)
		base = "/tmp";
	mkdir(base, 0700);
	snprintf(dir, sizeof(dir), "%s/dimse.XXXXXX", base);
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
	char cmd[PATH_MAX + 16];

	kill_all(state);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return run(cmd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_mixed_syntaxes, kill_all),
		cmocka_unit_test_teardown(test_echo, kill_all),
		cmocka_unit_test_teardown(test_peer_down, kill_all),
		cmocka_unit_test_teardown(test_silent_peers, kill_all),
		cmocka_unit_test_teardown(test_dimse_timeout, kill_all),
		cmocka_unit_test_teardown(test_association_refused, kill_all),
		cmocka_unit_test_teardown(test_wrong_called_ae, kill_all),
		cmocka_unit_test_teardown(test_peer_aborts, kill_all),
		cmocka_unit_test_teardown(test_sop_class_rejected, kill_all),
		cmocka_unit_test_teardown(test_conversion, kill_all),
		cmocka_unit_test_teardown(test_out_of_resources, kill_all),
		cmocka_unit_test_teardown(test_data_set_error, kill_all),
		cmocka_unit_test_teardown(test_bad_files, kill_all),
		cmocka_unit_test_teardown(test_no_descriptor_for_the_file, kill_all),
		cmocka_unit_test_teardown(test_many_sop_classes, kill_all),
		cmocka_unit_test_teardown(test_threads, kill_all),
		cmocka_unit_test_teardown(test_tls, kill_all),
		cmocka_unit_test_teardown(test_bad_peer_config, kill_all),
	};

	/* DIMSE_TEST_FILTER=test_tls runs one test (by hand). */
	if (getenv("DIMSE_TEST_FILTER"))
		cmocka_set_test_filter(getenv("DIMSE_TEST_FILTER"));
	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
