/*
 * notify.h - telling systemd how the daemon is doing (sd_notify).
 *
 * Owns: the notify protocol messages. Outside systemd (no NOTIFY_SOCKET)
 * every call does nothing. Called from the daemon loop's thread only.
 * systemd 252 has no Type=notify-reload; RELOADING=1 still carries
 * MONOTONIC_USEC so 253+ can match reloads.
 */
#ifndef DICOMSORT_NOTIFY_H
#define DICOMSORT_NOTIFY_H

#include <stdint.h>

void notify_ready(const char *status);
void notify_reloading(void);
void notify_stopping(void);
void notify_status(const char *status);
void notify_watchdog(void);

/** The watchdog interval systemd asked for in ms, 0 when none. */
int64_t notify_watchdog_ms(void);

#endif
