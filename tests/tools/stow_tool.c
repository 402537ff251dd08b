/*
 * stow_tool - test-only front end of stow_send()/stow_probe() (src/stow.c),
 * built by CMake for tests/forward/test_stow.py and never installed.
 *
 *   stow_tool [options] URL < manifest     send one batch
 *   stow_tool --probe [options] URL        probe the peer
 * options: --token FILE, --basic FILE, --insecure (no TLS verification),
 *          --ca FILE, --connect-timeout S, --timeout S, --parallel K (split
 *          the batch into K requests sent at once from K threads, as the
 *          forwarder's parallel connections do; exit 1 if any returned -1)
 * manifest: one item a line, "path<TAB>SOPClassUID<TAB>SOPInstanceUID<TAB>
 *           TransferSyntaxUID" (the test reads the UIDs with pydicom).
 * Output: one line per item, "RESULT<TAB>status<TAB>SOPInstanceUID<TAB>
 * reason", then "elapsed_ms<TAB>N" and "maxrss_kb<TAB>N" on stderr. Exit 0 when stow_send
 * returned 0, 1 when it returned -1 ("error<TAB>kind<TAB>message" on
 * stderr), 2 on bad usage.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dicomsort/delivery.h"

static const char *result_name(enum delivery_result r)
{
	switch (r) {
	case DELIVERY_DONE:
		return "DONE";
	case DELIVERY_RETRY:
		return "RETRY";
	case DELIVERY_REJECTED:
		return "REJECTED";
	default:
		return "PENDING";
	}
}

static void copy_uid(char *dst, const char *src)
{
	snprintf(dst, DELIVERY_UID_MAX, "%s", src ? src : "");
}

/* Read the manifest from stdin; returns the item count or -1. */
static long read_items(struct delivery_item **out)
{
	struct delivery_item *items = NULL, *p;
	char line[8192], *f[4];
	size_t n = 0;
	int i;

	while (fgets(line, sizeof(line), stdin) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		if (line[0] == '\0')
			continue;
		f[0] = strtok(line, "\t");
		for (i = 1; i < 4; i++)
			f[i] = strtok(NULL, "\t");
		if ((p = realloc(items, (n + 1) * sizeof(*items))) == NULL)
			break;
		items = p;
		memset(&items[n], 0, sizeof(items[n]));
		items[n].path = strdup(f[0]);
		copy_uid(items[n].sop_class_uid, f[1]);
		copy_uid(items[n].sop_instance_uid, f[2]);
		copy_uid(items[n].transfer_syntax_uid, f[3]);
		n++;
	}
	*out = items;
	return (long)n;
}

struct slice {
	const struct stow_peer *peer;
	struct delivery_item *items;
	size_t n;
	int rc;
	struct error err;
};

static void *send_slice(void *arg)
{
	struct slice *s = arg;

	s->rc = stow_send(s->peer, s->items, s->n, &s->err);
	return NULL;
}

/* Send items in k slices from k threads; -1 if any slice returned -1
 * (err: the first such error). */
static int send_parallel(const struct stow_peer *peer,
			 struct delivery_item *items, size_t n, int k,
			 struct error *err)
{
	struct slice s[16];
	pthread_t t[16];
	size_t per, off = 0;
	int i, rc = 0;

	if (k < 1 || k > 16)
		k = 1;
	per = (n + (size_t)k - 1) / (size_t)k;
	for (i = 0; i < k; i++) {
		s[i].peer = peer;
		s[i].items = items + off;
		s[i].n = off + per <= n ? per : n - off;
		off += s[i].n;
		error_clear(&s[i].err);
		if (pthread_create(&t[i], NULL, send_slice, &s[i]) != 0) {
			send_slice(&s[i]);	/* no thread: send it here */
			t[i] = pthread_self();
		}
	}
	for (i = 0; i < k; i++) {
		if (!pthread_equal(t[i], pthread_self()))
			pthread_join(t[i], NULL);
		if (s[i].rc == -1 && rc == 0) {
			*err = s[i].err;
			rc = -1;
		}
	}
	return rc;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Peak RSS of this program. Not getrusage(): its ru_maxrss keeps the
 * peak of the process that forked us (pytest) across execve. */
static void print_hwm(void)
{
	char line[256];
	FILE *f = fopen("/proc/self/status", "r");

	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "VmHWM:", 6) == 0)
			fprintf(stderr, "maxrss_kb\t%ld\n", atol(line + 6));
	fclose(f);
}

int main(int argc, char **argv)
{
	struct stow_peer peer = { .tls_verify = 1 };
	struct error err = ERROR_INIT;
	struct delivery_item *items = NULL;
	int probe = 0, parallel = 1, rc, i;
	long n, k;
	double t0;

	for (i = 1; i < argc - 1; i++) {
		if (strcmp(argv[i], "--probe") == 0)
			probe = 1;
		else if (strcmp(argv[i], "--insecure") == 0)
			peer.tls_verify = 0;
		else if (strcmp(argv[i], "--token") == 0)
			peer.token_file = argv[++i];
		else if (strcmp(argv[i], "--basic") == 0)
			peer.basic_auth_file = argv[++i];
		else if (strcmp(argv[i], "--ca") == 0)
			peer.tls_ca_file = argv[++i];
		else if (strcmp(argv[i], "--connect-timeout") == 0)
			peer.connect_timeout_s = atoi(argv[++i]);
		else if (strcmp(argv[i], "--timeout") == 0)
			peer.timeout_s = atoi(argv[++i]);
		else if (strcmp(argv[i], "--parallel") == 0)
			parallel = atoi(argv[++i]);
		else
			break;
	}
	if (i != argc - 1) {
		fprintf(stderr, "usage: stow_tool [--probe] [--token F] "
			"[--basic F] [--insecure] [--ca F] [--connect-timeout S] "
			"[--timeout S] [--parallel K] URL < manifest\n");
		return 2;
	}
	peer.url = argv[i];
	t0 = now_ms();
	if (probe) {
		rc = stow_probe(&peer, &err);
		n = 0;
	} else {
		n = read_items(&items);
		rc = parallel > 1 ?
		     send_parallel(&peer, items, (size_t)n, parallel, &err) :
		     stow_send(&peer, items, (size_t)n, &err);
	}
	for (k = 0; k < n; k++) {
		printf("%s\t%u\t%s\t%s\n", result_name(items[k].result),
		       items[k].status, items[k].sop_instance_uid,
		       items[k].reason);
		free((char *)items[k].path);
	}
	free(items);
	fprintf(stderr, "elapsed_ms\t%.1f\n", now_ms() - t0);
	print_hwm();
	if (rc == -1)
		fprintf(stderr, "error\t%d\t%s\n", (int)err.kind, err.msg);
	return rc == -1 ? 1 : 0;
}
