/*
 * delivery_absent.c - stands in for a transport this tree does not have
 * yet (src/dimse.cpp, src/stow.c are built in their own branches): every
 * send is retried later, every probe fails, so nothing is ever lost or
 * called delivered. Compiled only when CMake finds the transport missing.
 */
#include "dicomsort/delivery.h"

#ifndef DICOMSORT_HAVE_DIMSE
int dimse_send(const struct dimse_peer *peer, struct delivery_item *items,
	       size_t n, struct error *err)
{
	(void)peer;
	(void)items;
	(void)n;
	return error_set(err, ERROR_SETUP, 0, "built without DICOM forwarding");
}

int dimse_echo(const struct dimse_peer *peer, struct error *err)
{
	(void)peer;
	return error_set(err, ERROR_SETUP, 0, "built without DICOM forwarding");
}
#endif

#ifndef DICOMSORT_HAVE_STOW
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
#endif
