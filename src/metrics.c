/* metrics.c - counters and their two files; see metrics.h. */
#include "dicomsort/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dicomsort/quarantine.h"

/* From a file moved in (a settle time away) to a backlog after a stop. */
const double metrics_latency_bounds[METRICS_LATENCY_BUCKETS] = {
	0.5, 1, 2, 3, 5, 10, 30, 60, 300, 900, 3600, 86400,
};

void metrics_init(struct metrics *m, const char *instance, time_t now)
{
	memset(m, 0, sizeof(*m));
	snprintf(m->instance, sizeof(m->instance), "%s", instance);
	m->pid = getpid();
	m->started = now;
}

void metrics_stored(struct metrics *m, unsigned long long bytes,
		    double latency_s, time_t now)
{
	size_t i = 0;

	if (latency_s < 0)
		latency_s = 0;	/* a clock set back */
	while (i < METRICS_LATENCY_BUCKETS && latency_s > metrics_latency_bounds[i])
		i++;
	m->latency_count[i]++;
	m->latency_sum += latency_s;
	m->bytes += bytes;
	m->last_success = now;
}

void metrics_error(struct metrics *m, const char *text, time_t now)
{
	struct metrics_error *e = &m->errors[0];

	if (m->nerrors > 0 && strncmp(e->text, text, sizeof(e->text) - 1) == 0) {
		e->last = now;
		e->count++;
		return;
	}
	memmove(&m->errors[1], &m->errors[0],
		sizeof(m->errors[0]) * (METRICS_ERRORS - 1));
	if (m->nerrors < METRICS_ERRORS)
		m->nerrors++;
	e->first = e->last = now;
	e->count = 1;
	snprintf(e->text, sizeof(e->text), "%s", text);
}

/* ---- Prometheus text format ---- */

/* A label value: backslash, double quote and newline escaped. */
static void put_label(FILE *f, const char *value)
{
	for (const char *p = value; *p; p++) {
		if (*p == '\\' || *p == '"')
			fprintf(f, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", f);
		else
			fputc(*p, f);
	}
}

static void head(FILE *f, const char *name, const char *type,
		 const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_start(FILE *f, const struct metrics *m, const char *name)
{
	fprintf(f, "%s{config=\"", name);
	put_label(f, m->instance);
	fputc('"', f);
}

static void counter(FILE *f, const struct metrics *m, const char *name,
		    const char *help, unsigned long long value)
{
	head(f, name, "counter", help);
	sample_start(f, m, name);
	fprintf(f, "} %llu\n", value);
}

static void gauge(FILE *f, const struct metrics *m, const char *name,
		  const char *help, double value)
{
	head(f, name, "gauge", help);
	sample_start(f, m, name);
	fprintf(f, "} %.3f\n", value);
}

static void histogram(FILE *f, const struct metrics *m)
{
	static const char name[] = "dicomsortd_arrival_to_stored_seconds";
	unsigned long cumulative = 0;
	char bucket[sizeof(name) + 8];

	snprintf(bucket, sizeof(bucket), "%s_bucket", name);
	head(f, name, "histogram", "Seconds from a file's arrival in the "
	     "input folder (its ctime) to its output being stored.");
	for (size_t i = 0; i <= METRICS_LATENCY_BUCKETS; i++) {
		cumulative += m->latency_count[i];
		sample_start(f, m, bucket);
		if (i < METRICS_LATENCY_BUCKETS)
			fprintf(f, ",le=\"%g\"} %lu\n",
				metrics_latency_bounds[i], cumulative);
		else
			fprintf(f, ",le=\"+Inf\"} %lu\n", cumulative);
	}
	fprintf(f, "%s_sum{config=\"", name);
	put_label(f, m->instance);
	fprintf(f, "\"} %.3f\n", m->latency_sum);
	fprintf(f, "%s_count{config=\"", name);
	put_label(f, m->instance);
	fprintf(f, "\"} %lu\n", cumulative);
}

/* Forwarding's queues, one series per destination (none until then). */
static void destinations(FILE *f, const struct metrics *m)
{
	static const char *const names[2] = {
		"dicomsortd_destination_queue_files",
		"dicomsortd_destination_oldest_age_seconds",
	};

	if (m->ndestinations == 0)
		return;
	for (int k = 0; k < 2; k++) {
		head(f, names[k], "gauge", k == 0 ?
		     "Files waiting to be forwarded to a destination." :
		     "Age of the oldest file waiting for a destination.");
		for (size_t i = 0; i < m->ndestinations; i++) {
			const struct metrics_destination *d = &m->destinations[i];

			sample_start(f, m, names[k]);
			fputs(",destination=\"", f);
			put_label(f, d->name);
			if (k == 0)
				fprintf(f, "\"} %lu\n", d->queued);
			else
				fprintf(f, "\"} %.3f\n", d->oldest_age_s);
		}
	}
}

int metrics_format_prometheus(const struct metrics *m, time_t now, FILE *f)
{
	counter(f, m, "dicomsortd_files_stored_total",
		"Files stored in the output tree.", m->stored);
	counter(f, m, "dicomsortd_files_duplicate_total",
		"Files whose identical copy was stored already.", m->duplicates);
	counter(f, m, "dicomsortd_files_quarantined_total",
		"Files moved to quarantine.", m->quarantined);
	counter(f, m, "dicomsortd_files_held_total",
		"Files parked in hold for an unknown PatientID.", m->held);
	counter(f, m, "dicomsortd_retries_total",
		"Attempts that will be retried.", m->retries);
	counter(f, m, "dicomsortd_stored_bytes_total",
		"Bytes of the sources of stored files.", m->bytes);
	gauge(f, m, "dicomsortd_queue_files",
	      "Files noticed and not finished yet.", (double)m->queued);
	gauge(f, m, "dicomsortd_queue_oldest_age_seconds",
	      "Age of the oldest file noticed and not finished.",
	      m->oldest_queued_s);
	histogram(f, m);
	gauge(f, m, "dicomsortd_last_success_timestamp_seconds",
	      "When a file was last stored (0: not since the start).",
	      (double)m->last_success);
	gauge(f, m, "dicomsortd_start_time_seconds",
	      "When the daemon started.", (double)m->started);
	gauge(f, m, "dicomsortd_metrics_timestamp_seconds",
	      "When this file was written.", (double)now);
	destinations(f, m);
	return ferror(f) ? -1 : 0;
}

/* ---- the state file ---- */

static void put_escaped(FILE *f, const char *value)
{
	for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
		if (*p == '\\')
			fputs("\\\\", f);
		else if (*p == '\n')
			fputs("\\n", f);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\x%02x", *p);
		else
			fputc(*p, f);
	}
}

int metrics_format_state(const struct metrics *m, time_t now, FILE *f)
{
	fputs("dicomsortd-state 1\ninstance ", f);
	put_escaped(f, m->instance);
	fprintf(f, "\npid %ld\nstarted %lld\nupdated %lld\n", (long)m->pid,
		(long long)m->started, (long long)now);
	fprintf(f, "stored %lu\nduplicates %lu\nquarantined %lu\nheld %lu\n"
		"retries %lu\nbytes %llu\nlast_success %lld\nqueued %lu\n"
		"oldest_queued_s %.3f\n", m->stored, m->duplicates,
		m->quarantined, m->held, m->retries, m->bytes,
		(long long)m->last_success, m->queued, m->oldest_queued_s);
	for (size_t i = 0; i < m->nerrors; i++) {
		const struct metrics_error *e = &m->errors[i];

		fprintf(f, "error %lld %lld %lu ", (long long)e->first,
			(long long)e->last, e->count);
		put_escaped(f, e->text);
		fputc('\n', f);
	}
	for (size_t i = 0; i < m->ndestinations; i++) {
		const struct metrics_destination *d = &m->destinations[i];

		fprintf(f, "destination %lu %.3f ", d->queued, d->oldest_age_s);
		put_escaped(f, d->name);
		fputc('\n', f);
	}
	return ferror(f) ? -1 : 0;
}

static void read_state_line(struct metrics *m, char *line, time_t *updated)
{
	char *value = strchr(line, ' ');
	long long a, b;
	unsigned long n;
	double age;
	int used = 0;

	if (value == NULL)
		return;
	*value++ = '\0';
#define NUM(key, field, conv) \
	else if (strcmp(line, key) == 0) m->field = conv(value, NULL, 10)
	if (strcmp(line, "instance") == 0)
		quarantine_unescape(value, m->instance, sizeof(m->instance));
	else if (strcmp(line, "updated") == 0)
		*updated = (time_t)strtoll(value, NULL, 10);
	NUM("pid", pid, strtol);
	NUM("started", started, strtoll);
	NUM("stored", stored, strtoul);
	NUM("duplicates", duplicates, strtoul);
	NUM("quarantined", quarantined, strtoul);
	NUM("held", held, strtoul);
	NUM("retries", retries, strtoul);
	NUM("bytes", bytes, strtoull);
	NUM("last_success", last_success, strtoll);
	NUM("queued", queued, strtoul);
	else if (strcmp(line, "oldest_queued_s") == 0)
		m->oldest_queued_s = strtod(value, NULL);
	else if (strcmp(line, "error") == 0 && m->nerrors < METRICS_ERRORS &&
		 sscanf(value, "%lld %lld %lu %n", &a, &b, &n, &used) == 3) {
		struct metrics_error *e = &m->errors[m->nerrors++];

		e->first = (time_t)a;
		e->last = (time_t)b;
		e->count = n;
		quarantine_unescape(value + used, e->text, sizeof(e->text));
	} else if (strcmp(line, "destination") == 0 &&
		   m->ndestinations < METRICS_DESTINATIONS_MAX &&
		   sscanf(value, "%lu %lf %n", &n, &age, &used) == 2) {
		struct metrics_destination *d =
			&m->destinations[m->ndestinations++];

		d->queued = n;
		d->oldest_age_s = age;
		quarantine_unescape(value + used, d->name, sizeof(d->name));
	}
#undef NUM
}

int metrics_read_state(const char *path, struct metrics *m, time_t *updated,
		       struct error *err)
{
	FILE *f = fopen(path, "re");
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;

	memset(m, 0, sizeof(*m));
	*updated = 0;
	if (f == NULL)
		return error_set(err, ERROR_INPUT, errno, "%s", path);
	while ((len = getline(&line, &cap, f)) != -1) {
		if (len > 0 && line[len - 1] == '\n')
			line[len - 1] = '\0';
		read_state_line(m, line, updated);
	}
	free(line);
	fclose(f);
	return 0;
}

/* ---- atomic replacement ---- */

static int temp_in_folder(const char *path, char *tmp, size_t len)
{
	const char *slash = strrchr(path, '/');
	int dirlen = slash ? (int)(slash - path) + 1 : 0;
	int n = snprintf(tmp, len, "%.*s.%s.XXXXXX", dirlen, path,
			 slash ? slash + 1 : path);

	if (n < 0 || (size_t)n >= len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return mkostemp(tmp, O_CLOEXEC);
}

int metrics_write_file(const char *path, mode_t mode,
		       int (*format)(const struct metrics *, time_t, FILE *),
		       const struct metrics *m, time_t now, struct error *err)
{
	char tmp[PATH_MAX];
	int fd = temp_in_folder(path, tmp, sizeof(tmp));
	FILE *f;
	int rc, saved;

	if (fd == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "%s", path);
	f = fdopen(fd, "w");
	if (f == NULL) {
		saved = errno;
		close(fd);
		unlink(tmp);
		return error_set(err, ERROR_TRANSIENT, saved, "%s", path);
	}
	rc = format(m, now, f);
	if (fchmod(fd, mode) == -1)
		rc = -1;
	saved = errno;
	if (fclose(f) != 0 && rc == 0) {
		rc = -1;
		saved = errno;
	}
	if (rc == 0 && rename(tmp, path) == -1) {
		rc = -1;
		saved = errno;
	}
	if (rc == -1) {
		unlink(tmp);
		return error_set(err, ERROR_TRANSIENT, saved ? saved : EIO,
				 "%s", path);
	}
	return 0;
}
