/* log.c - journald or stderr; see log.h. */
#define SD_JOURNAL_SUPPRESS_LOCATION
#include "dicomsort/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>

/* Where journald listens (sd_journal_send()'s own path). */
#define JOURNAL_SOCKET "/run/systemd/journal/socket"

/* Set once by log_open() before threads exist; read-only afterwards. */
static struct {
	const char *ident;
	bool journal;
	bool debug;
} log_state = { "dicomsortd", false, false };

void log_open(const char *ident, enum log_target target, int debug)
{
	log_state.ident = ident;
	log_state.debug = debug != 0;
	switch (target) {
	case LOG_TARGET_JOURNAL:
		log_state.journal = true;
		break;
	case LOG_TARGET_STDERR:
		log_state.journal = false;
		break;
	case LOG_TARGET_AUTO:
		log_state.journal = getenv("JOURNAL_STREAM") != NULL;
		break;
	}
	/* Without journald, sd_journal_send() returns 0 and drops the
	 * record: an audit trail must not vanish, so use stderr instead. */
	if (log_state.journal && access(JOURNAL_SOCKET, F_OK) == -1) {
		log_state.journal = false;
		log_msg(LOG_WARNING, "the journal is not reachable (%s: %s); "
			"logging to stderr", JOURNAL_SOCKET, strerror(errno));
	}
}

static const char *priority_name(int priority)
{
	switch (priority) {
	case LOG_EMERG: case LOG_ALERT: case LOG_CRIT: case LOG_ERR:
		return "error";
	case LOG_WARNING:
		return "warning";
	case LOG_DEBUG:
		return "debug";
	default:
		return "info";
	}
}

/* One fputs per record, so lines from different threads never interleave.
 * Each starts with the UTC time (ISO 8601, milliseconds): stderr may end
 * up in a file that has no time stamps of its own. */
static void stderr_line(const char *line)
{
	char buf[5120], stamp[32] = "-";
	struct timespec now;
	struct tm tm;
	size_t n;

	if (clock_gettime(CLOCK_REALTIME, &now) == 0 &&
	    gmtime_r(&now.tv_sec, &tm) != NULL &&
	    (n = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm)) > 0)
		snprintf(stamp + n, sizeof(stamp) - n, ".%03dZ",
			 (int)(now.tv_nsec / 1000000));
	snprintf(buf, sizeof(buf), "%s %s: %s\n", stamp, log_state.ident, line);
	fputs(buf, stderr);
}

/*
 * Values come from file names and DICOM data: a newline or quote in them
 * must not forge a second record or end a field early, so quotes,
 * backslashes and control bytes are escaped (\", \\, \xHH).
 */
static void append_escaped(char *buf, size_t len, const char *val)
{
	size_t used = strlen(buf);

	for (const unsigned char *p = (const unsigned char *)val;
	     *p && used + 5 < len; p++) {
		if (*p == '"' || *p == '\\') {
			buf[used++] = '\\';
			buf[used++] = (char)*p;
		} else if (*p < 0x20 || *p == 0x7f) {
			used += (size_t)snprintf(buf + used, len - used, "\\x%02x", *p);
		} else {
			buf[used++] = (char)*p;
		}
	}
	buf[used] = '\0';
}

void log_msg(int priority, const char *fmt, ...)
{
	char msg[2048], line[2100];
	va_list ap;

	if (priority == LOG_DEBUG && !log_state.debug)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* A journal that went away (a send error) costs no record. */
	if (log_state.journal &&
	    sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", priority,
			    "SYSLOG_IDENTIFIER=%s", log_state.ident, NULL) >= 0)
		return;
	snprintf(line, sizeof(line), "%s: ", priority_name(priority));
	append_escaped(line, sizeof(line), msg);
	stderr_line(line);
}

static void append_field(char *buf, size_t len, const char *key, const char *val)
{
	size_t used = strlen(buf);

	if (val == NULL || used + strlen(key) + 4 >= len)
		return;
	snprintf(buf + used, len - used, " %s=\"", key);
	append_escaped(buf, len - 1, val);
	used = strlen(buf);
	buf[used] = '"';
	buf[used + 1] = '\0';
}

/* One journal field "KEY=value" for sd_journal_sendv(). */
static void add_iov(struct iovec *iov, int *n, char *buf, size_t len,
		    const char *key, const char *val)
{
	int w;

	if (val == NULL)
		return;
	w = snprintf(buf, len, "%s=%s", key, val);
	iov[*n].iov_base = buf;
	iov[*n].iov_len = w < 0 ? 0 : (size_t)w < len ? (size_t)w : len - 1;
	(*n)++;
}

static int journal_audit(const struct audit_record *rec, const char *message)
{
	static const size_t len = 4200;
	char *bufs = malloc(18 * len), prio[4];
	struct iovec iov[18];
	int n = 0;

	if (bufs == NULL)
		return -1;
	snprintf(prio, sizeof(prio), "%d", rec->priority);
	add_iov(iov, &n, bufs + n * len, len, "MESSAGE", message);
	add_iov(iov, &n, bufs + n * len, len, "PRIORITY", prio);
	add_iov(iov, &n, bufs + n * len, len, "SYSLOG_IDENTIFIER", log_state.ident);
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_EVENT", rec->event);
	/* The first fields are sent empty when absent: journald keeps the
	 * record shape stable for queries. */
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_SOURCE",
		rec->source ? rec->source : "");
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_DEST",
		rec->dest ? rec->dest : "");
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_SOP_INSTANCE_UID",
		rec->sop_instance_uid ? rec->sop_instance_uid : "");
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_REASON",
		rec->reason ? rec->reason : "");
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_PROFILE", rec->profile);
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_TABLE_SHA256",
		rec->table_sha256);
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_SOURCE_SHA256",
		rec->source_sha256);
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_SOURCE_OWNER",
		rec->source_owner);
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_DISPOSAL",
		rec->disposal);
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_RECOVERED",
		rec->recovered ? "1" : NULL);
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_DESTINATION",
		rec->destination);
	add_iov(iov, &n, bufs + n * len, len, "DICOMSORTD_PEER_STATUS",
		rec->peer_status);
	int rc = sd_journal_sendv(iov, n);

	free(bufs);
	return rc;
}

void log_audit(const struct audit_record *rec)
{
	char message[3072], line[4600];

	snprintf(message, sizeof(message), "%s %s%s%s%s%s", rec->event,
		 rec->source ? rec->source : "",
		 rec->dest ? " -> " : "", rec->dest ? rec->dest : "",
		 rec->reason ? ": " : "", rec->reason ? rec->reason : "");
	/* On a send error (no socket, journald gone) the record goes to
	 * stderr: never nowhere. */
	if (log_state.journal && journal_audit(rec, message) >= 0)
		return;
	snprintf(line, sizeof(line), "%s: event=%s", priority_name(rec->priority),
		 rec->event);
	append_field(line, sizeof(line), "source", rec->source);
	append_field(line, sizeof(line), "dest", rec->dest);
	append_field(line, sizeof(line), "sop_instance_uid", rec->sop_instance_uid);
	append_field(line, sizeof(line), "reason", rec->reason);
	append_field(line, sizeof(line), "profile", rec->profile);
	append_field(line, sizeof(line), "table_sha256", rec->table_sha256);
	append_field(line, sizeof(line), "source_sha256", rec->source_sha256);
	append_field(line, sizeof(line), "source_owner", rec->source_owner);
	append_field(line, sizeof(line), "disposal", rec->disposal);
	append_field(line, sizeof(line), "recovered", rec->recovered ? "1" : NULL);
	append_field(line, sizeof(line), "destination", rec->destination);
	append_field(line, sizeof(line), "peer_status", rec->peer_status);
	stderr_line(line);
}
