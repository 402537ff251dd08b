/*
 * ops.h - the admin's commands beside the daemon:
 *   dicomsortd status -c CONF [--json]
 *   dicomsortd quarantine list -c CONF [--json]
 *   dicomsortd quarantine requeue -c CONF [--reason TEXT] [--all] [PATH...]
 *
 * Owns: reading what the running daemon publishes (metrics.h's state file
 * and metrics file, systemd's view of the unit) and the quarantine folder
 * (quarantine.h), and printing it for a human or as JSON. requeue is the
 * one command that changes anything: it moves files back into the input
 * folder with an audit record each, under the quarantine lock.
 * Exit status: 0 fine; 1 something failed (status: the daemon is not
 * running, 3, as `systemctl status`); 2 usage or configuration error.
 */
#ifndef DICOMSORT_OPS_H
#define DICOMSORT_OPS_H

#include <stdbool.h>

/** Whether argv[1] names one of these commands. */
bool ops_is_command(int argc, char **argv);

/** Run the command in argv[1...]; returns the exit status. */
int ops_main(int argc, char **argv);

#endif
