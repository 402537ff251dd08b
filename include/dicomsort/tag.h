/*
 * tag.h - DICOM tags as numbers, and the structural limits every reader of
 * this tree enforces. A leaf: it includes nothing of the project, so the
 * byte layer (src/part10.c) and the DCMTK adapter (dicom.h) share it
 * without including each other.
 *
 * Owns: the tag encoding (uint32_t: group << 16 | element), the named tags
 * the core reads, and the nesting/order limits checked before DCMTK parses.
 */
#ifndef DICOMSORT_TAG_H
#define DICOMSORT_TAG_H

#include <stdint.h>

#define DCM_TAG(group, element) (((uint32_t)(group) << 16) | (uint32_t)(element))
#define DCM_GROUP(tag) ((uint16_t)((tag) >> 16))
#define DCM_ELEMENT(tag) ((uint16_t)((tag) & 0xffffu))

/* dicom_load() rejects a file whose sequences nest deeper than this
 * (DCMTK's reader recurses per level; real objects nest a few levels). */
#define DICOM_MAX_DEPTH 64
/* Elements whose tag is below the one before them in the same item: DICOM
 * forbids any, real files have a few, and DCMTK's reader is quadratic in
 * them (a reversed file of 1.2 MB took 93 s). */
#define DICOM_MAX_UNORDERED 64

#define TAG_SpecificCharacterSet DCM_TAG(0x0008, 0x0005)
#define TAG_SOPClassUID DCM_TAG(0x0008, 0x0016)
#define TAG_SOPInstanceUID DCM_TAG(0x0008, 0x0018)
#define TAG_StudyDate DCM_TAG(0x0008, 0x0020)
#define TAG_StudyInstanceUID DCM_TAG(0x0020, 0x000d)
#define TAG_SeriesInstanceUID DCM_TAG(0x0020, 0x000e)
#define TAG_Modality DCM_TAG(0x0008, 0x0060)
#define TAG_PatientName DCM_TAG(0x0010, 0x0010)
#define TAG_PatientID DCM_TAG(0x0010, 0x0020)
#define TAG_PatientBirthDate DCM_TAG(0x0010, 0x0030)
#define TAG_SeriesNumber DCM_TAG(0x0020, 0x0011)
#define TAG_SeriesDescription DCM_TAG(0x0008, 0x103e)
#define TAG_PixelData DCM_TAG(0x7fe0, 0x0010)

#endif
