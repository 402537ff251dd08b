/*
 * log.h - the daemon's voice: diagnostics and the per-file audit trail.
 *
 * Owns: where messages go (journald with structured fields, or stderr as
 * one "key=value" line per record) and their shape. The target is chosen
 * once by log_open() in main() before any thread starts and never changes
 * after, so the functions below are safe from any thread.
 *
 * Audit records carry DICOMSORTD_EVENT, DICOMSORTD_SOURCE, DICOMSORTD_DEST,
 * DICOMSORTD_SOP_INSTANCE_UID and DICOMSORTD_REASON, and for files
 * DICOMSORTD_PROFILE, DICOMSORTD_TABLE_SHA256, DICOMSORTD_SOURCE_SHA256,
 * DICOMSORTD_SOURCE_OWNER, DICOMSORTD_DISPOSAL and DICOMSORTD_RECOVERED,
 * and for forwarding DICOMSORTD_DESTINATION and DICOMSORTD_PEER_STATUS,
 * so an admin can ask `journalctl DICOMSORTD_EVENT=quarantined`. Callers must pass only values
 * that may be logged: when de-identifying, never a name, birth date or
 * original patient ID (the daemon passes de-identified values only).
 */
#ifndef DICOMSORT_LOG_H
#define DICOMSORT_LOG_H

#include <syslog.h>

#include "dicomsort/config.h"

struct audit_record {
	const char *event;	/* stored, duplicate, quarantined, retry, ... */
	int priority;		/* LOG_INFO, LOG_WARNING, LOG_ERR */
	const char *source;	/* NULL to leave the field out */
	const char *dest;
	const char *sop_instance_uid;
	const char *reason;
	/* Per-file records (issue 10, section 5); NULL to leave out. */
	const char *profile;		/* de-identification profile */
	const char *table_sha256;	/* short digest of the table in force */
	const char *source_sha256;	/* of the source bytes */
	const char *source_owner;	/* "uid(name)": the sending account */
	const char *disposal;		/* deleted, or where it was moved */
	int recovered;			/* 1: sent at start for an output a
					   SIGKILL left without its record */
	/* Forwarding (issue 13); NULL to leave out. */
	const char *destination;	/* the `forward` destination's name */
	const char *peer_status;	/* "0x0000", "HTTP 200", "none" */
};

/** Choose the target: LOG_TARGET_AUTO means journald when stderr is
 *  connected to the journal (systemd sets JOURNAL_STREAM), else stderr.
 *  debug enables LOG_DEBUG messages. */
void log_open(const char *ident, enum log_target target, int debug);

/** A diagnostic message (no trailing newline needed). */
void log_msg(int priority, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/** One audit record; its MESSAGE is "EVENT SOURCE -> DEST: REASON". */
void log_audit(const struct audit_record *rec);

#endif
