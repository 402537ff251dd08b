/*
 * checkconf.h - dicomsortd --check-config: what a start will meet.
 *
 * Owns: the checks beyond parsing (config.h already refused syntax, unknown
 * keys and bad values) and their report. Run as root, the folder and file
 * checks run in a child that switched to the service user (the unit's
 * User=, read from the installed unit, else "dicomsortd"), so they see what
 * the daemon will see (with no unit installed and no such user, as root,
 * with a warning):
 *   - each folder exists and is a directory (a missing input is an error,
 *     the others are created at start), reachable and writable;
 *   - a rename from input into quarantine, processed and hold works, else
 *     it says moves will copy;
 *   - the correlation table and the secret are readable;
 *   - quarantine, processed, hold and input are not inside output (they
 *     hold originals), output not inside input;
 *   - template keywords are standard dictionary entries ("did you mean");
 *   - two old IDs mapped to one new ID (warning, naming both lines);
 *   - profile basic with a layout keyword basic empties (warning);
 *   - forward: credential files (token_file, basic_auth_file,
 *     tls_key_file) are regular, not empty, readable by no one else;
 *     TLS CA and certificate files are readable;
 *   - forward under the installed unit: no network (PrivateNetwork=yes
 *     or no AF_INET: the drop-in is missing), a peer's address not in
 *     IPAddressAllow= (warnings);
 *   - under the installed unit (and its drop-ins): a folder no
 *     ReadWritePaths= entry covers (warning), input and a move target in
 *     separate entries, i.e. separate mounts, so moves copy (note).
 * $DICOMSORTD_CHECK_UNIT names another unit file (drop-ins in FILE.d/).
 * Each finding is one line on stderr: "FILE:LINE: KEY: error|warning|note:
 * text". The summary goes to stdout.
 */
#ifndef DICOMSORT_CHECKCONF_H
#define DICOMSORT_CHECKCONF_H

#include "dicomsort/config.h"

/** The unit file whose User= names the service user by default. */
#define CHECKCONF_UNIT_PATHS \
	{ "/etc/systemd/system/dicomsortd.service", \
	  "/lib/systemd/system/dicomsortd.service", \
	  "/usr/lib/systemd/system/dicomsortd.service" }
#define CHECKCONF_DEFAULT_USER "dicomsortd"

/**
 * Run every check on cfg and print the findings. user: the account to
 * check as (NULL: the unit's User=); only root can switch, anyone else is
 * checked as themselves. Returns the exit status: 0 no errors (warnings and
 * notes may have been printed), 2 at least one error.
 */
int checkconf_run(const struct config *cfg, const char *user);

/**
 * --check-config --probe: a C-ECHO (DICOM) or an HTTP OPTIONS (DICOMweb)
 * to each `forward` destination, one line each ("ok" on stdout, the error
 * on stderr). 0 when all answered, 2 otherwise.
 */
int checkconf_probe(const struct config *cfg);

#endif
