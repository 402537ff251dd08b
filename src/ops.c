/* ops.c - status and the quarantine tools; see ops.h. */
#include "dicomsort/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dicomsort/config.h"
#include "dicomsort/fsutil.h"
#include "dicomsort/log.h"
#include "dicomsort/metrics.h"
#include "dicomsort/quarantine.h"

extern char **environ;

struct opts {
	const char *config_path;
	const char *reason;
	const char *log_target;
	bool json, all;
	char **paths;		/* requeue's PATH... */
	int npaths;
};

static const char usage_text[] =
"usage: dicomsortd status -c CONF [--json]\n"
"       dicomsortd quarantine list -c CONF [--json]\n"
"       dicomsortd quarantine requeue -c CONF [--reason TEXT] [--all] [PATH...]\n";

bool ops_is_command(int argc, char **argv)
{
	return argc > 1 && (strcmp(argv[1], "status") == 0 ||
			    strcmp(argv[1], "quarantine") == 0);
}

static int usage(const char *why)
{
	if (why != NULL)
		fprintf(stderr, "dicomsortd: %s\n", why);
	fputs(usage_text, stderr);
	return 2;
}

/* argv[0] is the command's last word (status, list, requeue). */
static int parse_opts(int argc, char **argv, struct opts *o)
{
	enum { OPT_JSON = 256, OPT_REASON, OPT_ALL, OPT_LOG, OPT_HELP };
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "reason", required_argument, NULL, OPT_REASON },
		{ "all", no_argument, NULL, OPT_ALL },
		{ "log-target", required_argument, NULL, OPT_LOG },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	bool requeue = strcmp(argv[0], "requeue") == 0;
	int c;

	o->config_path = CONFIG_DEFAULT_PATH;
	optind = 1;
	while ((c = getopt_long(argc, argv, "c:", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->config_path = optarg; break;
		case OPT_JSON: o->json = true; break;
		case OPT_REASON: o->reason = optarg; break;
		case OPT_ALL: o->all = true; break;
		case OPT_LOG: o->log_target = optarg; break;
		case OPT_HELP: fputs(usage_text, stdout); exit(0);
		default: return usage(NULL);
		}
	}
	if (!requeue && (o->reason != NULL || o->all || optind < argc))
		return usage("--reason, --all and PATH go with requeue");
	if (requeue && o->json)
		return usage("--json goes with status and list");
	if (requeue && o->reason == NULL && !o->all && optind == argc)
		return usage("requeue what? Give PATH..., --reason TEXT or --all");
	o->paths = argv + optind;
	o->npaths = argc - optind;
	return 0;
}

/* ---- output helpers ---- */

/* A JSON string: bytes that are not UTF-8 become U+00XX. */
static void json_str(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	fputc('"', f);
	while (*p) {
		int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 :
			(*p & 0xf0) == 0xe0 ? 2 : (*p & 0xf8) == 0xf0 ? 3 : -1;
		int ok = n >= 0;

		for (int i = 1; ok && i <= n; i++)
			ok = (p[i] & 0xc0) == 0x80;
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f || !ok)
			fprintf(f, "\\u%04x", *p);
		else {
			fwrite(p, 1, (size_t)n + 1, f);
			p += n;
		}
		p++;
	}
	fputc('"', f);
}

/* Text for a terminal: control bytes shown as '?'. */
static void put_text(FILE *f, const char *s, int width)
{
	int n = 0;

	for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
		fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, f);
	for (; n < width; n++)
		fputc(' ', f);
}

static void age_text(double s, char *buf, size_t len)
{
	if (s < 0)
		s = 0;
	if (s < 120)
		snprintf(buf, len, "%.0fs", s);
	else if (s < 7200)
		snprintf(buf, len, "%.0fm", s / 60);
	else if (s < 2 * 86400)
		snprintf(buf, len, "%.0fh", s / 3600);
	else
		snprintf(buf, len, "%.0fd", s / 86400);
}

static void size_text(unsigned long long b, char *buf, size_t len)
{
	static const char units[] = "BKMGTP";
	double v = (double)b;
	int u = 0;

	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%lluB", b);
	else
		snprintf(buf, len, "%.1f%c", v, units[u]);
}

static void time_text(time_t t, char *buf, size_t len)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- quarantine by reason ---- */

struct reason_count {
	char reason[1024];
	unsigned long count;
	unsigned long long bytes;
	time_t oldest, newest;
};

struct summary {
	struct reason_count *v;
	size_t n, cap;
	unsigned long files;
	unsigned long long bytes;
	time_t oldest;
};

static int summarize(void *ctx, const struct quarantine_item *it,
		     struct error *err)
{
	struct summary *s = ctx;
	const char *reason = it->has_sidecar ? it->reason : "(no reason file)";
	struct reason_count *r = NULL;

	for (size_t i = 0; i < s->n && r == NULL; i++)
		if (strcmp(s->v[i].reason, reason) == 0)
			r = &s->v[i];
	if (r == NULL) {
		if (s->n == s->cap) {
			size_t cap = s->cap ? s->cap * 2 : 8;
			struct reason_count *v = realloc(s->v, cap * sizeof(*v));

			if (v == NULL)
				return error_set(err, ERROR_TRANSIENT, ENOMEM,
						 "out of memory");
			s->v = v;
			s->cap = cap;
		}
		r = &s->v[s->n++];
		memset(r, 0, sizeof(*r));
		snprintf(r->reason, sizeof(r->reason), "%s", reason);
		r->oldest = r->newest = it->when;
	}
	r->count++;
	r->bytes += (unsigned long long)it->st.st_size;
	if (it->when < r->oldest)
		r->oldest = it->when;
	if (it->when > r->newest)
		r->newest = it->when;
	if (s->files == 0 || it->when < s->oldest)
		s->oldest = it->when;
	s->files++;
	s->bytes += (unsigned long long)it->st.st_size;
	return 0;
}

static int by_count(const void *a, const void *b)
{
	const struct reason_count *x = a, *y = b;

	return x->count < y->count ? 1 : x->count > y->count ? -1 :
	       strcmp(x->reason, y->reason);
}

/* ---- status ---- */

/* `systemctl is-active UNIT`: "active", "inactive", ...; "" without
 * systemd. Run without a shell: the unit name comes from a file name. */
static void systemd_state(const char *unit, char *out, size_t len)
{
	char *argv[] = { "systemctl", "is-active", "--", (char *)unit, NULL };
	posix_spawn_file_actions_t fa;
	int pipefd[2], status;
	ssize_t n = 0;
	pid_t pid;

	out[0] = '\0';
	if (access("/run/systemd/system", F_OK) == -1 || pipe(pipefd) == -1)
		return;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addclose(&fa, pipefd[0]);
	if (posix_spawnp(&pid, "systemctl", &fa, NULL, argv, environ) == 0) {
		close(pipefd[1]);
		pipefd[1] = -1;
		n = read(pipefd[0], out, len - 1);
		waitpid(pid, &status, 0);
	}
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[0]);
	if (pipefd[1] != -1)
		close(pipefd[1]);
	out[n > 0 ? n : 0] = '\0';
	out[strcspn(out, "\n")] = '\0';
}

/* The daemon's pid is alive and still a dicomsortd (not a reuse). */
static bool daemon_alive(pid_t pid)
{
	char path[64], comm[64] = "";
	FILE *f;

	if (pid <= 0)
		return false;
	snprintf(path, sizeof(path), "/proc/%ld/comm", (long)pid);
	f = fopen(path, "re");
	if (f == NULL)
		return false;
	if (fgets(comm, sizeof(comm), f) == NULL)
		comm[0] = '\0';
	fclose(f);
	return strncmp(comm, "dicomsortd", 10) == 0;
}

struct status {
	const struct config *cfg;
	char unit[128];
	char systemd[64];
	bool have_state, alive;
	struct metrics m;
	time_t updated, now;
	double metrics_age;	/* -1: no metrics file */
	const char *state;	/* running, not responding, stopped */
	struct summary q;
};

static void gather(struct status *s, const struct config *cfg)
{
	struct error err = ERROR_INIT;
	char stem[64];
	struct stat st;
	double fresh = 3.0 * (double)cfg->metrics_interval_s + 10;

	s->cfg = cfg;
	s->now = time(NULL);
	config_stem(cfg, stem, sizeof(stem));
	if (strcmp(stem, "dicomsortd") == 0)
		snprintf(s->unit, sizeof(s->unit), "dicomsortd.service");
	else
		snprintf(s->unit, sizeof(s->unit), "dicomsortd@%s.service", stem);
	systemd_state(s->unit, s->systemd, sizeof(s->systemd));
	s->have_state = cfg->status_file != NULL &&
			metrics_read_state(cfg->status_file, &s->m, &s->updated,
					   &err) == 0;
	s->alive = s->have_state && daemon_alive(s->m.pid);
	s->metrics_age = -1;
	if (cfg->metrics_file != NULL && stat(cfg->metrics_file, &st) == 0)
		s->metrics_age = difftime(s->now, st.st_mtime);
	if (s->alive && difftime(s->now, s->updated) <= fresh)
		s->state = "running";
	else if (s->alive)
		s->state = "not responding";
	else
		s->state = "stopped";
	error_clear(&err);
	if (quarantine_walk(cfg->quarantine, summarize, &s->q, &err) < 0)
		s->q.files = 0;
	if (s->q.n > 1)	/* qsort(NULL, 0) is undefined */
		qsort(s->q.v, s->q.n, sizeof(*s->q.v), by_count);
}

static void status_json(const struct status *s)
{
	const struct metrics *m = &s->m;

	printf("{\"config\":");
	json_str(stdout, s->cfg->path);
	printf(",\"state\":\"%s\",\"systemd_unit\":", s->state);
	json_str(stdout, s->unit);
	printf(",\"systemd\":");
	if (s->systemd[0])
		json_str(stdout, s->systemd);
	else
		printf("null");
	printf(",\"status_file\":");
	if (s->cfg->status_file)
		json_str(stdout, s->cfg->status_file);
	else
		printf("null");
	printf(",\"pid\":%ld,\"state_updated\":%lld,\"metrics_file\":",
	       s->have_state ? (long)m->pid : 0L, (long long)s->updated);
	if (s->cfg->metrics_file)
		json_str(stdout, s->cfg->metrics_file);
	else
		printf("null");
	printf(",\"metrics_age_s\":");
	if (s->metrics_age >= 0)
		printf("%.0f", s->metrics_age);
	else
		printf("null");
	printf(",\"started\":%lld,\"queue\":{\"files\":%lu,\"oldest_age_s\":%.3f}"
	       ",\"counters\":{\"stored\":%lu,\"duplicates\":%lu,"
	       "\"quarantined\":%lu,\"held\":%lu,\"retries\":%lu,\"bytes\":%llu}"
	       ",\"last_success\":%lld,\"errors\":[",
	       (long long)m->started, m->queued, m->oldest_queued_s, m->stored,
	       m->duplicates, m->quarantined, m->held, m->retries, m->bytes,
	       (long long)m->last_success);
	for (size_t i = 0; i < m->nerrors; i++) {
		printf("%s{\"first\":%lld,\"last\":%lld,\"count\":%lu,\"text\":",
		       i ? "," : "", (long long)m->errors[i].first,
		       (long long)m->errors[i].last, m->errors[i].count);
		json_str(stdout, m->errors[i].text);
		printf("}");
	}
	printf("],\"destinations\":[");
	for (size_t i = 0; i < m->ndestinations; i++) {
		printf("%s{\"name\":", i ? "," : "");
		json_str(stdout, m->destinations[i].name);
		printf(",\"queue_files\":%lu,\"oldest_age_s\":%.3f}",
		       m->destinations[i].queued,
		       m->destinations[i].oldest_age_s);
	}
	printf("],\"quarantine\":{\"folder\":");
	json_str(stdout, s->cfg->quarantine);
	printf(",\"files\":%lu,\"bytes\":%llu,\"max_age_days\":%ld,"
	       "\"by_reason\":[", s->q.files, s->q.bytes,
	       s->cfg->quarantine_max_age_days);
	for (size_t i = 0; i < s->q.n; i++) {
		const struct reason_count *r = &s->q.v[i];

		printf("%s{\"reason\":", i ? "," : "");
		json_str(stdout, r->reason);
		printf(",\"files\":%lu,\"bytes\":%llu,\"oldest_age_s\":%.0f,"
		       "\"newest_age_s\":%.0f}", r->count, r->bytes,
		       difftime(s->now, r->oldest), difftime(s->now, r->newest));
	}
	printf("]}}\n");
}

static void status_service_line(const struct status *s)
{
	char age[32];

	printf("Service:     %s", s->state);
	if (s->have_state) {
		age_text(difftime(s->now, s->updated), age, sizeof(age));
		printf(" (pid %ld, state written %s ago)", (long)s->m.pid, age);
	}
	if (s->systemd[0])
		printf("; systemd: %s is %s", s->unit, s->systemd);
	printf("\n");
	if (!s->have_state)
		printf("Status file: %s\n", s->cfg->status_file == NULL ? "off "
		       "(status_file = \"\")" : "none yet (the running daemon "
		       "writes it; under systemd in RuntimeDirectory=dicomsortd)");
	if (s->metrics_age >= 0) {
		age_text(s->metrics_age, age, sizeof(age));
		printf("Metrics:     %s (written %s ago)\n",
		       s->cfg->metrics_file, age);
	} else {
		printf("Metrics:     %s\n", s->cfg->metrics_file ?
		       "not written yet (see the daemon's warnings)" : "off");
	}
}

/* One line per forwarding destination: its outbox and oldest entry. */
static void status_destinations(const struct metrics *m)
{
	char a[32];

	for (size_t i = 0; i < m->ndestinations; i++) {
		const struct metrics_destination *d = &m->destinations[i];

		age_text(d->oldest_age_s, a, sizeof(a));
		printf("%s", i == 0 ? "Forwarding:  " : "             ");
		put_text(stdout, d->name, 0);
		printf(": %lu files queued%s%s\n", d->queued,
		       d->queued ? ", oldest " : "", d->queued ? a : "");
	}
}

static void status_human(const struct status *s)
{
	const struct metrics *m = &s->m;
	char a[32], b[32], t[32];

	printf("dicomsortd   %s\n", s->cfg->path);
	status_service_line(s);
	if (s->have_state) {
		age_text(m->oldest_queued_s, a, sizeof(a));
		printf("Queue:       %lu files%s%s\n", m->queued,
		       m->queued ? ", oldest " : "", m->queued ? a : "");
		status_destinations(m);
		time_text(m->started, t, sizeof(t));
		size_text(m->bytes, b, sizeof(b));
		printf("Since start: %s: stored %lu (%s), duplicates %lu, "
		       "quarantined %lu, held %lu, retries %lu\n", t, m->stored,
		       b, m->duplicates, m->quarantined, m->held, m->retries);
		if (m->last_success) {
			time_text(m->last_success, t, sizeof(t));
			age_text(difftime(s->now, m->last_success), a, sizeof(a));
			printf("Last stored: %s (%s ago)\n", t, a);
		}
		printf("Last errors:%s\n", m->nerrors ? "" : " none");
		for (size_t i = 0; i < m->nerrors; i++) {
			time_text(m->errors[i].last, t, sizeof(t));
			printf("  %s ", t);
			if (m->errors[i].count > 1)
				printf("(x%lu) ", m->errors[i].count);
			put_text(stdout, m->errors[i].text, 0);
			printf("\n");
		}
	}
	size_text(s->q.bytes, b, sizeof(b));
	printf("Quarantine:  %s: %lu files, %s", s->cfg->quarantine, s->q.files, b);
	if (s->cfg->quarantine_max_age_days > 0)
		printf(", purged after %ld days", s->cfg->quarantine_max_age_days);
	printf("\n");
	for (size_t i = 0; i < s->q.n; i++) {
		const struct reason_count *r = &s->q.v[i];

		age_text(difftime(s->now, r->oldest), a, sizeof(a));
		age_text(difftime(s->now, r->newest), b, sizeof(b));
		printf("  %6lu  oldest %-5s newest %-5s ", r->count, a, b);
		put_text(stdout, r->reason, 0);
		printf("\n");
	}
}

static int cmd_status(const struct config *cfg, const struct opts *o)
{
	struct status s;
	int rc;

	memset(&s, 0, sizeof(s));
	gather(&s, cfg);
	if (o->json)
		status_json(&s);
	else
		status_human(&s);
	rc = strcmp(s.state, "running") == 0 ? 0 : 3;
	free(s.q.v);
	return rc;
}

/* ---- quarantine list ---- */

struct lister {
	bool json;
	unsigned long n;
	time_t now;
};

static int list_one(void *ctx, const struct quarantine_item *it,
		    struct error *err)
{
	struct lister *l = ctx;
	char age[32], size[32], when[32];

	(void)err;
	time_text(it->when, when, sizeof(when));
	if (l->json) {
		printf("%s\n  {\"file\":", l->n++ ? "," : "");
		json_str(stdout, it->rel);
		printf(",\"reason\":");
		json_str(stdout, it->has_sidecar ? it->reason : "");
		printf(",\"rule\":");
		json_str(stdout, it->rule);
		printf(",\"source\":");
		json_str(stdout, it->source);
		printf(",\"sender\":");
		json_str(stdout, it->owner);
		printf(",\"size\":%lld,\"quarantined\":\"%s\",\"age_s\":%.0f,"
		       "\"attempts\":%u,\"sha256\":", (long long)it->st.st_size,
		       when, difftime(l->now, it->when), it->attempts);
		json_str(stdout, it->sha256);
		printf(",\"has_reason_file\":%s}", it->has_sidecar ? "true" : "false");
		return 0;
	}
	if (l->n++ == 0)
		printf("%-6s %8s  %-20s %-28s %s\n", "AGE", "SIZE", "SENDER",
		       "REASON", "FILE");
	age_text(difftime(l->now, it->when), age, sizeof(age));
	size_text((unsigned long long)it->st.st_size, size, sizeof(size));
	printf("%-6s %8s  ", age, size);
	put_text(stdout, it->owner[0] ? it->owner : "-", 20);
	printf(" ");
	put_text(stdout, it->has_sidecar ? it->reason : "(no reason file)", 28);
	printf(" ");
	put_text(stdout, it->rel, 0);
	printf("\n");
	return 0;
}

static int cmd_list(const struct config *cfg, const struct opts *o)
{
	struct lister l = { .json = o->json, .now = time(NULL) };
	struct error err = ERROR_INIT;
	long n;

	if (o->json) {
		printf("{\"quarantine\":");
		json_str(stdout, cfg->quarantine);
		printf(",\"files\":[");
	}
	n = quarantine_walk(cfg->quarantine, list_one, &l, &err);
	if (o->json)
		printf("%s]}\n", l.n ? "\n" : "");
	else if (n == 0)
		printf("quarantine %s is empty\n", cfg->quarantine);
	if (n < 0) {
		fprintf(stderr, "dicomsortd: %s\n", err.msg);
		return 1;
	}
	return 0;
}

/* ---- quarantine requeue ---- */

struct requeuer {
	const struct config *cfg;
	const struct opts *o;
	char **wanted;		/* paths relative to the quarantine */
	bool *matched;
	int input_fd;
	char by[160];
	unsigned long moved, failed;
};

static bool wanted(struct requeuer *r, const char *rel)
{
	bool any = false;

	for (int i = 0; i < r->o->npaths; i++) {
		size_t n = strlen(r->wanted[i]);

		if (n == 0 || (strncmp(rel, r->wanted[i], n) == 0 &&
			       (rel[n] == '\0' || rel[n] == '/'))) {
			r->matched[i] = true;
			any = true;
		}
	}
	return any;
}

static bool selected(struct requeuer *r, const struct quarantine_item *it)
{
	if (r->o->npaths > 0 && !wanted(r, it->rel))
		return false;
	if (r->o->reason != NULL && strcasestr(it->reason, r->o->reason) == NULL)
		return false;
	return true;
}

static int requeue_one(void *ctx, const struct quarantine_item *it,
		       struct error *err)
{
	struct requeuer *r = ctx;
	char dest[PATH_MAX], source[64], reason[sizeof(r->by) + 1100];
	struct audit_record rec = { .event = "requeued", .priority = LOG_INFO,
				    .reason = reason };
	bool deid = r->cfg->profile != DEID_NONE;

	if (!selected(r, it))
		return 0;
	if (quarantine_requeue(r->input_fd, it, dest, sizeof(dest), err) == -1) {
		fprintf(stderr, "dicomsortd: cannot requeue %s: %s\n", it->rel,
			err->msg);
		r->failed++;
		error_clear(err);
		return 0;
	}
	/* When de-identifying, names in the drop folder may be a patient's:
	 * the audit names the file by its inode (the daemon's own way). */
	snprintf(source, sizeof(source), "inode %llu",
		 (unsigned long long)it->st.st_ino);
	rec.source = deid ? source : it->rel;
	rec.dest = deid ? NULL : dest;
	rec.source_sha256 = it->sha256[0] ? it->sha256 : NULL;
	rec.source_owner = it->owner[0] ? it->owner : NULL;
	snprintf(reason, sizeof(reason), "requeued by %s; was quarantined: %s",
		 r->by, it->has_sidecar ? it->reason : "(no reason file)");
	log_audit(&rec);
	printf("requeued %s -> %s\n", it->rel, dest);
	r->moved++;
	return 0;
}

/* PATH as given (absolute, relative to the working folder, or relative
 * to the quarantine) to a path relative to the quarantine. */
static char *quarantine_rel(const char *qdir, const char *path)
{
	char *qreal = realpath(qdir, NULL), *dir = NULL, *out = NULL;
	char copy[PATH_MAX * 2], full[PATH_MAX * 2];
	const char *base;
	size_t qlen;
	char *slash;
	struct stat st;

	if (qreal == NULL)
		return NULL;
	if (path[0] != '/' && lstat(path, &st) == -1)
		snprintf(full, sizeof(full), "%s/%s", qreal, path);
	else
		snprintf(full, sizeof(full), "%s", path);
	snprintf(copy, sizeof(copy), "%s", full);
	while (strlen(copy) > 1 && copy[strlen(copy) - 1] == '/')
		copy[strlen(copy) - 1] = '\0';
	slash = strrchr(copy, '/');
	base = slash ? slash + 1 : copy;
	if (slash != NULL) {
		*slash = '\0';
		dir = realpath(copy[0] ? copy : "/", NULL);
	} else {
		dir = realpath(".", NULL);
	}
	qlen = strlen(qreal);
	if (dir != NULL && strncmp(dir, qreal, qlen) == 0 &&
	    (dir[qlen] == '\0' || dir[qlen] == '/')) {
		const char *sub = dir[qlen] == '/' ? dir + qlen + 1 : "";

		if (strcmp(base, "..") != 0 && asprintf(&out, "%s%s%s", sub,
			     sub[0] ? "/" : "", strcmp(base, ".") ? base : "") == -1)
			out = NULL;
	} else if (dir != NULL && strcmp(path, qdir) == 0) {
		out = strdup("");
	}
	/* a sidecar named stands for its file */
	if (out != NULL && strlen(out) > 7 &&
	    strcmp(out + strlen(out) - 7, ".reason") == 0) {
		snprintf(full, sizeof(full), "%s/%.*s", qreal,
			 (int)strlen(out) - 7, out);
		if (lstat(full, &st) == 0)
			out[strlen(out) - 7] = '\0';
	}
	free(dir);
	free(qreal);
	return out;
}

static int resolve_paths(struct requeuer *r)
{
	r->wanted = calloc((size_t)r->o->npaths + 1, sizeof(char *));
	r->matched = calloc((size_t)r->o->npaths + 1, sizeof(bool));
	if (r->wanted == NULL || r->matched == NULL)
		return -1;
	for (int i = 0; i < r->o->npaths; i++) {
		r->wanted[i] = quarantine_rel(r->cfg->quarantine, r->o->paths[i]);
		if (r->wanted[i] == NULL) {
			fprintf(stderr, "dicomsortd: %s is not inside the "
				"quarantine %s\n", r->o->paths[i],
				r->cfg->quarantine);
			return -1;
		}
	}
	return 0;
}

static void requeuer_free(struct requeuer *r)
{
	for (int i = 0; r->wanted && i < r->o->npaths; i++)
		free(r->wanted[i]);
	free(r->wanted);
	free(r->matched);
	if (r->input_fd != -1)
		close(r->input_fd);
}

static void who(char *out, size_t len)
{
	char buf[1024];
	struct passwd pw, *pwp = NULL;
	uid_t uid = getuid();

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &pwp) == 0 && pwp != NULL)
		snprintf(out, len, "%u(%.64s)", (unsigned)uid, pw.pw_name);
	else
		snprintf(out, len, "%u", (unsigned)uid);
}

static int requeue_all(struct requeuer *r)
{
	struct error err = ERROR_INIT;
	int rc = 0;

	/* A requeue cut short by a kill left its file claimed in the
	 * quarantine: it gets its name back, and is requeued now. */
	if (fsutil_recover_claims(r->cfg->quarantine, &err) < 0)
		fprintf(stderr, "dicomsortd: %s\n", err.msg);
	error_clear(&err);
	if (quarantine_walk(r->cfg->quarantine, requeue_one, r, &err) < 0) {
		fprintf(stderr, "dicomsortd: %s\n", err.msg);
		rc = 1;
	}
	for (int i = 0; i < r->o->npaths; i++) {
		if (!r->matched[i]) {
			fprintf(stderr, "dicomsortd: %s: no such file in the "
				"quarantine\n", r->o->paths[i]);
			rc = 1;
		}
	}
	printf("%lu files requeued into %s%s\n", r->moved, r->cfg->input,
	       r->failed ? " (some failed, see above)" : "");
	return rc != 0 || r->failed ? 1 : 0;
}

static int cmd_requeue(const struct config *cfg, const struct opts *o)
{
	struct requeuer r = { .cfg = cfg, .o = o, .input_fd = -1 };
	struct error err = ERROR_INIT;
	int lock, rc;

	who(r.by, sizeof(r.by));
	if (resolve_paths(&r) == -1) {
		requeuer_free(&r);
		return 1;
	}
	r.input_fd = fsutil_open_dir(cfg->input, false, &err);
	lock = r.input_fd == -1 ? -1 : quarantine_lock(cfg->quarantine, true, &err);
	if (lock == -1) {
		fprintf(stderr, "dicomsortd: %s\n", err.msg);
		requeuer_free(&r);
		return 1;
	}
	rc = requeue_all(&r);
	close(lock);
	requeuer_free(&r);
	return rc;
}

/* ---- entry ---- */

static int open_log(const struct config *cfg, const struct opts *o)
{
	enum log_target target = cfg->log_target;

	if (o->log_target != NULL) {
		if (strcmp(o->log_target, "journal") == 0)
			target = LOG_TARGET_JOURNAL;
		else if (strcmp(o->log_target, "stderr") == 0)
			target = LOG_TARGET_STDERR;
		else if (strcmp(o->log_target, "auto") == 0)
			target = LOG_TARGET_AUTO;
		else
			return -1;
	}
	/* An admin at a terminal: the audit goes where the daemon's goes,
	 * the journal, whenever there is one. */
	if (target == LOG_TARGET_AUTO &&
	    access("/run/systemd/journal/socket", F_OK) == 0)
		target = LOG_TARGET_JOURNAL;
	log_open("dicomsortd", target, 0);
	return 0;
}

int ops_main(int argc, char **argv)
{
	struct opts o = { 0 };
	struct error err = ERROR_INIT;
	struct config cfg;
	const char *cmd = argv[1];
	int rc;

	argc--, argv++;		/* argv[0]: status or quarantine */
	if (strcmp(cmd, "quarantine") == 0) {
		if (argc < 2 || (strcmp(argv[1], "list") != 0 &&
				 strcmp(argv[1], "requeue") != 0))
			return usage("quarantine wants list or requeue");
		argc--, argv++;
	}
	if (parse_opts(argc, argv, &o) != 0)
		return 2;
	if (config_load(&cfg, o.config_path, &err) == -1) {
		fprintf(stderr, "dicomsortd: %s\n", err.msg);
		return 2;
	}
	if (open_log(&cfg, &o) == -1) {
		config_release(&cfg);
		return usage("--log-target wants auto, journal or stderr");
	}
	if (strcmp(argv[0], "status") == 0)
		rc = cmd_status(&cfg, &o);
	else if (strcmp(argv[0], "list") == 0)
		rc = cmd_list(&cfg, &o);
	else
		rc = cmd_requeue(&cfg, &o);
	config_release(&cfg);
	return rc;
}
