/* dimse_fixture.cpp - see dimse_fixture.h. Test-only. */
#include "dimse_fixture.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcrleerg.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpeg/djencode.h>
#include <dcmtk/oflog/oflog.h>

#include <openssl/evp.h>

#include <cstdio>
#include <mutex>
#include <vector>

static void codecs()
{
	static std::once_flag once;

	std::call_once(once, [] {
		OFLog::configure(OFLogger::OFF_LOG_LEVEL);
		DcmRLEDecoderRegistration::registerCodecs();
		DcmRLEEncoderRegistration::registerCodecs();
		DJDecoderRegistration::registerCodecs();
		DJEncoderRegistration::registerCodecs();
	});
}

extern "C" int fixture_make(const char *path, const char *sop_class,
			    const char *sop_instance, const char *ts_uid,
			    unsigned seed, int rows, int cols)
{
	DcmFileFormat ff;
	DcmDataset *ds = ff.getDataset();
	E_TransferSyntax xfer = DcmXfer(ts_uid).getXfer();
	std::vector<Uint16> px(static_cast<size_t>(rows) * cols);

	codecs();
	if (xfer == EXS_Unknown)
		return -1;
	for (size_t i = 0; i < px.size(); i++)
		px[i] = static_cast<Uint16>((i * 7 + seed * 131 + (i / cols) * seed) & 0x0fff);
	ds->putAndInsertString(DCM_SOPClassUID, sop_class);
	ds->putAndInsertString(DCM_SOPInstanceUID, sop_instance);
	ds->putAndInsertString(DCM_PatientName, "SECRET^PATIENT");
	ds->putAndInsertString(DCM_PatientID, "SECRET-ID");
	ds->putAndInsertString(DCM_StudyInstanceUID, "1.2.826.0.1.3680043.10.7613.99.1");
	ds->putAndInsertString(DCM_SeriesInstanceUID, "1.2.826.0.1.3680043.10.7613.99.2");
	ds->putAndInsertString(DCM_Modality, "OT");
	ds->putAndInsertUint16(DCM_SamplesPerPixel, 1);
	ds->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
	ds->putAndInsertUint16(DCM_Rows, static_cast<Uint16>(rows));
	ds->putAndInsertUint16(DCM_Columns, static_cast<Uint16>(cols));
	ds->putAndInsertUint16(DCM_BitsAllocated, 16);
	ds->putAndInsertUint16(DCM_BitsStored, 12);
	ds->putAndInsertUint16(DCM_HighBit, 11);
	ds->putAndInsertUint16(DCM_PixelRepresentation, 0);
	ds->putAndInsertUint16Array(DCM_PixelData, px.data(), px.size());
	if (DcmXfer(xfer).isEncapsulated() &&
	    ds->chooseRepresentation(xfer, nullptr).bad())
		return -1;
	return ff.saveFile(path, xfer).good() ? 0 : -1;
}

extern "C" int fixture_pixels(const char *path, char md5[33], char ts_uid[65])
{
	DcmFileFormat ff;
	DcmDataset *ds;
	const Uint16 *px = nullptr;
	unsigned long count = 0;
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	codecs();
	if (ff.loadFile(path).bad())
		return -1;
	ds = ff.getDataset();
	snprintf(ts_uid, 65, "%s", DcmXfer(ds->getOriginalXfer()).getXferID());
	if (ds->chooseRepresentation(EXS_LittleEndianExplicit, nullptr).bad() ||
	    ds->findAndGetUint16Array(DCM_PixelData, px, &count).bad() || !px)
		return -1;
	if (!EVP_Digest(px, count * 2, d, &len, EVP_md5(), nullptr))
		return -1;
	for (unsigned i = 0; i < len && i < 16; i++)
		snprintf(md5 + 2 * i, 3, "%02x", d[i]);
	return 0;
}
