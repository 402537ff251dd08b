/*
 * generator.h - the systemd generator behind dicomsortd@.service.
 *
 * Owns: turning each instance configuration /etc/dicomsortd/NAME.conf into
 * the drop-in dicomsortd@NAME.service.d/50-folders.conf, which gives that
 * instance write access to its own folders (ReadWritePaths=) and waits for
 * their mounts (RequiresMountsFor=). The folders are read with the daemon's
 * own config loader, so the sandbox never needs a second, hand-kept copy of
 * the folder list.
 *
 * systemd runs generators at boot and at every daemon-reload, before any
 * unit starts: this one never fails the boot. A configuration it cannot
 * read, or an instance name systemd would mangle, gets no drop-in (so that
 * instance sees no folder writable and its start fails with the daemon's
 * own message), one log line, and the other instances go on. The exit
 * status is 0 whatever the configurations hold.
 */
#ifndef DICOMSORT_GENERATOR_H
#define DICOMSORT_GENERATOR_H

#include <stdio.h>

/* Where the instance configurations are; DICOMSORTD_GENERATOR_CONF_DIR
 * replaces it (for tests only). */
#define GENERATOR_CONF_DIR "/etc/dicomsortd"
/* The drop-in's name inside dicomsortd@NAME.service.d/. */
#define GENERATOR_DROPIN "50-folders.conf"

/**
 * Write one drop-in below unit_dir for each usable conf_dir/NAME.conf
 * (dicomsortd.conf, the plain unit's, excepted). Problems are logged one
 * line each to log. Returns the number of instances that got no drop-in
 * because of a problem (0: all fine); never stops at one.
 */
int generator_run(const char *conf_dir, const char *unit_dir, FILE *log);

/**
 * The ReadWritePaths= entries for folders[0..n) (absolute paths): their
 * common parent when it is below a directory of its own (not "/" nor a
 * system folder such as /var or /usr), else each folder. Each entry is
 * malloc'ed into out[] (room for n); returns how many, or -1 (ENOMEM).
 */
int generator_rw_paths(const char *const *folders, int n, char **out);

#endif
