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

/*
 * Every audit line is built here, two for each file a burst stores: with
 * memcpy and a digit table rather than snprintf(), whose set-up per call
 * was a large share of the daemon's user time (PROFILE §16-§17). Each helper writes
 * exactly what snprintf() would: as much of the text as fits in len with
 * its NUL, and returns the new length (used < len on entry).
 */
static size_t put(char *buf, size_t len, size_t used, const char *s)
{
	size_t n = strlen(s);

	if (n > len - used - 1)
		n = len - used - 1;
	memcpy(buf + used, s, n);
	buf[used + n] = '\0';
	return used + n;
}

/* n as exactly `width` decimal digits (0 <= n < 10^width). */
static void put_digits(char *at, unsigned n, int width)
{
	while (width-- > 0) {
		at[width] = (char)('0' + n % 10);
		n /= 10;
	}
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" (strftime's "%Y-%m-%dT%H:%M:%S" and
 * ".%03dZ"); strftime() for a year that is not four digits. */
static void format_stamp(char *stamp, size_t len, const struct tm *tm,
			 long nsec)
{
	int year = tm->tm_year + 1900;
	size_t n;

	if (year < 1000 || year > 9999) {
		if ((n = strftime(stamp, len, "%Y-%m-%dT%H:%M:%S", tm)) > 0)
			snprintf(stamp + n, len - n, ".%03dZ",
				 (int)(nsec / 1000000));
		return;
	}
	memcpy(stamp, "0000-00-00T00:00:00.000Z", 25);
	put_digits(stamp, (unsigned)year, 4);
	put_digits(stamp + 5, (unsigned)tm->tm_mon + 1, 2);
	put_digits(stamp + 8, (unsigned)tm->tm_mday, 2);
	put_digits(stamp + 11, (unsigned)tm->tm_hour, 2);
	put_digits(stamp + 14, (unsigned)tm->tm_min, 2);
	put_digits(stamp + 17, (unsigned)tm->tm_sec, 2);
	put_digits(stamp + 20, (unsigned)(nsec / 1000000), 3);
}

/* One write per record, so lines from different threads never interleave.
 * Each starts with the UTC time (ISO 8601, milliseconds): stderr may end
 * up in a file that has no time stamps of its own. */
static void stderr_line(const char *line)
{
	char buf[5120], stamp[32] = "-";
	struct timespec now;
	struct tm tm;
	size_t used;

	if (clock_gettime(CLOCK_REALTIME, &now) == 0 &&
	    gmtime_r(&now.tv_sec, &tm) != NULL)
		format_stamp(stamp, sizeof(stamp), &tm, now.tv_nsec);
	used = put(buf, sizeof(buf), 0, stamp);
	used = put(buf, sizeof(buf), used, " ");
	used = put(buf, sizeof(buf), used, log_state.ident);
	used = put(buf, sizeof(buf), used, ": ");
	used = put(buf, sizeof(buf), used, line);
	used = put(buf, sizeof(buf), used, "\n");
	fwrite(buf, 1, used, stderr);
}

/*
 * Values come from file names and DICOM data: a newline or quote in them
 * must not forge a second record or end a field early, so quotes,
 * backslashes and control bytes are escaped (\", \\, \xHH). Appends at
 * buf[used]; returns the new length.
 */
static size_t append_escaped(char *buf, size_t len, size_t used,
			     const char *val)
{
	static const char hex[] = "0123456789abcdef";

	for (const unsigned char *p = (const unsigned char *)val;
	     *p && used + 5 < len; p++) {
		if (*p == '"' || *p == '\\') {
			buf[used++] = '\\';
			buf[used++] = (char)*p;
		} else if (*p < 0x20 || *p == 0x7f) {
			buf[used++] = '\\';
			buf[used++] = 'x';
			buf[used++] = hex[*p >> 4];
			buf[used++] = hex[*p & 0xf];
		} else {
			buf[used++] = (char)*p;
		}
	}
	buf[used] = '\0';
	return used;
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
	append_escaped(line, sizeof(line), strlen(line), msg);
	stderr_line(line);
}

/* ` key="value"` at buf[used], if it fits; returns the new length. */
static size_t append_field(char *buf, size_t len, size_t used,
			   const char *key, const char *val)
{
	if (val == NULL || used + strlen(key) + 4 >= len)
		return used;
	used = put(buf, len, used, " ");
	used = put(buf, len, used, key);
	used = put(buf, len, used, "=\"");
	used = append_escaped(buf, len - 1, used, val);
	buf[used] = '"';
	buf[used + 1] = '\0';
	return used + 1;
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

/* The journal's MESSAGE: "event source[ -> dest][: reason]". */
static void audit_message(char *buf, size_t len,
			  const struct audit_record *rec)
{
	size_t used = put(buf, len, 0, rec->event);

	used = put(buf, len, used, " ");
	used = put(buf, len, used, rec->source ? rec->source : "");
	if (rec->dest) {
		used = put(buf, len, used, " -> ");
		used = put(buf, len, used, rec->dest);
	}
	if (rec->reason) {
		used = put(buf, len, used, ": ");
		put(buf, len, used, rec->reason);
	}
}

void log_audit(const struct audit_record *rec)
{
	char message[3072], line[4600];
	size_t used;

	/* On a send error (no socket, journald gone) the record goes to
	 * stderr: never nowhere. */
	if (log_state.journal) {
		audit_message(message, sizeof(message), rec);
		if (journal_audit(rec, message) >= 0)
			return;
	}
	used = put(line, sizeof(line), 0, priority_name(rec->priority));
	used = put(line, sizeof(line), used, ": event=");
	used = put(line, sizeof(line), used, rec->event);
#define FIELD(key, val) used = append_field(line, sizeof(line), used, key, val)
	FIELD("source", rec->source);
	FIELD("dest", rec->dest);
	FIELD("sop_instance_uid", rec->sop_instance_uid);
	FIELD("reason", rec->reason);
	FIELD("profile", rec->profile);
	FIELD("table_sha256", rec->table_sha256);
	FIELD("source_sha256", rec->source_sha256);
	FIELD("source_owner", rec->source_owner);
	FIELD("disposal", rec->disposal);
	FIELD("recovered", rec->recovered ? "1" : NULL);
	FIELD("destination", rec->destination);
	FIELD("peer_status", rec->peer_status);
#undef FIELD
	stderr_line(line);
}
