/*
 * delivery_absent.c - stands in for the STOW-RS transport while this tree
 * does not have it yet (src/stow.c is built in its own branch): every send
 * is retried later, every probe fails, so nothing is ever lost or called
 * delivered. Compiled only when CMake finds src/stow.c missing.
 */
#include "dicomsort/delivery.h"

int stow_send(const struct stow_peer *peer, struct delivery_item *items,
	      size_t n, struct error *err)
{
	(void)peer;
	(void)items;
	(void)n;
	return error_set(err, ERROR_SETUP, 0, "built without DICOMweb forwarding");
}

int stow_probe(const struct stow_peer *peer, struct error *err)
{
	(void)peer;
	return error_set(err, ERROR_SETUP, 0, "built without DICOMweb forwarding");
}
