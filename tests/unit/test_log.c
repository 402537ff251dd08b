/* test_log.c - the stderr audit line, byte for byte: log.c builds it with
 * memcpy (PROFILE §17) and must write exactly what its snprintf() version
 * wrote, which is kept below as the reference - escapes, absent fields,
 * and a line cut short at every length around its buffer's end. (The
 * daemon tests parse the real lines.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dicomsort/log.h"

/* ---- the reference: log.c's formatter before §17, unchanged ---- */

static const char *ref_priority_name(int priority)
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

static void ref_append_escaped(char *buf, size_t len, const char *val)
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

static void ref_append_field(char *buf, size_t len, const char *key,
			     const char *val)
{
	size_t used = strlen(buf);

	if (val == NULL || used + strlen(key) + 4 >= len)
		return;
	snprintf(buf + used, len - used, " %s=\"", key);
	ref_append_escaped(buf, len - 1, val);
	used = strlen(buf);
	buf[used] = '"';
	buf[used + 1] = '\0';
}

/* The line after its time stamp: "ident: line\n", in a 5120-byte buffer
 * with the stamp's "YYYY-MM-DDTHH:MM:SS.mmmZ " before it. */
static void ref_audit(const struct audit_record *rec, const char *ident,
		      char *out, size_t outlen)
{
	char line[4600], buf[5120];

	snprintf(line, sizeof(line), "%s: event=%s",
		 ref_priority_name(rec->priority), rec->event);
	ref_append_field(line, sizeof(line), "source", rec->source);
	ref_append_field(line, sizeof(line), "dest", rec->dest);
	ref_append_field(line, sizeof(line), "sop_instance_uid",
			 rec->sop_instance_uid);
	ref_append_field(line, sizeof(line), "reason", rec->reason);
	ref_append_field(line, sizeof(line), "profile", rec->profile);
	ref_append_field(line, sizeof(line), "table_sha256", rec->table_sha256);
	ref_append_field(line, sizeof(line), "source_sha256",
			 rec->source_sha256);
	ref_append_field(line, sizeof(line), "source_owner", rec->source_owner);
	ref_append_field(line, sizeof(line), "disposal", rec->disposal);
	ref_append_field(line, sizeof(line), "recovered",
			 rec->recovered ? "1" : NULL);
	ref_append_field(line, sizeof(line), "destination", rec->destination);
	ref_append_field(line, sizeof(line), "peer_status", rec->peer_status);
	snprintf(buf, sizeof(buf), "%s %s: %s\n", "2026-12-03T18:00:00.000Z",
		 ident, line);
	snprintf(out, outlen, "%s", buf + 25);
}

/* ---- capturing what log_audit() writes to stderr ---- */

static FILE *capture;
static int saved_stderr = -1;

static int start_capture(void **state)
{
	(void)state;
	capture = tmpfile();
	if (capture == NULL)
		return -1;
	fflush(stderr);
	saved_stderr = dup(STDERR_FILENO);
	if (saved_stderr == -1 || dup2(fileno(capture), STDERR_FILENO) == -1)
		return -1;
	log_open("dicomsortd-test", LOG_TARGET_STDERR, 0);
	return 0;
}

static int stop_capture(void **state)
{
	(void)state;
	fflush(stderr);
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	fclose(capture);
	return 0;
}

/* What one log_audit() wrote: its stamp checked and cut off. */
static void audit_once(const struct audit_record *rec, char *got, size_t len)
{
	static char raw[8192];
	struct tm tm = { 0 };
	time_t t, now = time(NULL);
	size_t n;
	char *end;

	assert_int_equal(fseek(capture, 0, SEEK_SET), 0);
	assert_int_equal(ftruncate(fileno(capture), 0), 0);
	log_audit(rec);
	fflush(stderr);
	assert_int_equal(fseek(capture, 0, SEEK_SET), 0);
	n = fread(raw, 1, sizeof(raw) - 1, capture);
	raw[n] = '\0';
	assert_true(n > 25);
	/* "YYYY-MM-DDTHH:MM:SS.mmmZ ", within a minute of now (UTC). */
	end = strptime(raw, "%Y-%m-%dT%H:%M:%S", &tm);
	assert_non_null(end);
	assert_true(end == raw + 19);
	assert_true(raw[19] == '.' && raw[23] == 'Z' && raw[24] == ' ');
	for (int i = 20; i < 23; i++)
		assert_true(raw[i] >= '0' && raw[i] <= '9');
	t = timegm(&tm);
	assert_true(t >= now - 60 && t <= now + 60);
	snprintf(got, len, "%s", raw + 25);
}

static void check(const struct audit_record *rec)
{
	static char want[8192], got[8192];

	ref_audit(rec, "dicomsortd-test", want, sizeof(want));
	audit_once(rec, got, sizeof(got));
	assert_string_equal(got, want);
}

static void audit_lines_match_the_snprintf_formatter(void **state)
{
	struct audit_record rec = {
		.event = "stored", .priority = LOG_INFO,
		.source = "p00/CT0001.dcm", .dest = "PAT0001/20240101/1_Thorax",
		.sop_instance_uid = "1.2.826.0.1.3680043.8.498.1",
		.profile = "seed", .table_sha256 = "0123456789abcdef",
		.source_sha256 = "ba7816bf8f01cfea414140de5dae2223",
		.source_owner = "1000(pacs)",
	};

	(void)state;
	check(&rec);
	rec.event = "disposed";
	rec.disposal = "deleted";
	rec.recovered = 1;
	rec.priority = LOG_WARNING;
	check(&rec);
	rec.priority = LOG_ERR;
	rec.source = "a \"quoted\" back\\slash\nnew\tline\x01\x1f\x7f"
		     " \xc3\xa9 utf-8 \xff";
	rec.reason = "";
	rec.destination = "pacs";
	rec.peer_status = "0x0000";
	check(&rec);
	rec.priority = LOG_DEBUG;
	rec.source = NULL;
	rec.dest = NULL;
	rec.sop_instance_uid = NULL;
	check(&rec);
	rec.priority = LOG_CRIT;
	check(&(struct audit_record){ .event = "", .priority = LOG_NOTICE });
}

/* Long values cut at every length around the line's 4600 bytes, with
 * escapes (four bytes each) straddling the end. */
static void audit_lines_cut_short_as_before(void **state)
{
	static char big[5000], esc[5000];
	struct audit_record rec = { .event = "quarantined",
				    .priority = LOG_WARNING };

	(void)state;
	memset(big, 'x', sizeof(big) - 1);
	for (size_t i = 0; i < sizeof(esc) - 1; i++)
		esc[i] = i % 3 == 0 ? '\n' : i % 3 == 1 ? '"' : 'y';
	for (size_t n = 4520; n < 4620; n++) {
		big[n] = '\0';
		esc[n] = '\0';
		rec.source = big;
		rec.dest = "d";
		rec.reason = "why \"\n";
		rec.disposal = "kept";
		check(&rec);
		rec.source = esc;
		check(&rec);
		rec.source = "s";
		rec.dest = esc + (n - 4520) * 7;
		check(&rec);
		rec.event = big + (n - 4520) / 2;
		check(&rec);
		rec.event = big;
		check(&rec);
		rec.event = "quarantined";
		big[n] = 'x';
		esc[n] = n % 3 == 0 ? '\n' : n % 3 == 1 ? '"' : 'y';
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			audit_lines_match_the_snprintf_formatter,
			start_capture, stop_capture),
		cmocka_unit_test_setup_teardown(audit_lines_cut_short_as_before,
						start_capture, stop_capture),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
