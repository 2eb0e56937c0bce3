"""Imaging (Ségur vague 2, DRIM-M): the imaging report's facts, the exam as the PACS describes it, and the KOS
manifest a DRIMbox source publishes to the DMP (XDS-I.b)."""
