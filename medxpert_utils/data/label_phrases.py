"""Phrase tables of the rule labeler (:mod:`medxpert_utils.data.labels`): what counts as a mention of each
CheXpert observation, which cues negate it or make it uncertain, and which normal statements fix a value.

Regular-expression fragments, matched case-insensitively on whitespace-collapsed text. Keep each entry one
phrase; the labeler joins and compiles them once at import.
"""

from __future__ import annotations

import re

_W = r"(?:(?!(?:no|not|without|normal|borderline)\b)[\w-]+ )"  # one modifier word: not a negation or hedge
_BE = r"(?:is |are |remains? |appears? |is again |has become |have become |has |have )?"

MENTION_PHRASES: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"enlarged cardiomediastinum",
        rf"enlarged {_W}{{0,1}}cardiomediastinal (?:silhouette|contours?)",
        r"enlargement of the cardiomediastinal (?:silhouette|contours?)",
        rf"cardiomediastinal (?:silhouette|contours?) {_BE}{_W}{{0,2}}(?:enlarged|widened)",
        rf"widen(?:ed|ing) (?:of )?(?:the )?{_W}{{0,1}}mediastin(?:um|al (?:silhouette|contours?))",
        r"mediastinal (?:widening|enlargement)",
        rf"mediastinum {_BE}{_W}{{0,2}}(?:widened|enlarged)",
        rf"mediastinal (?:silhouette|contours?) {_BE}{_W}{{0,2}}(?:widened|enlarged)",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac enlargement",
        rf"enlarged {_W}{{0,1}}(?:heart|cardiac (?:silhouette|contour|shadow))",
        r"enlargement of the (?:heart|cardiac silhouette)",
        rf"(?:heart|cardiac (?:silhouette|size|contour|shadow))(?: size)? {_BE}{_W}{{0,2}}(?:enlarged|increased|large)",
        r"heart enlargement",
        r"increased? in (?:the )?(?:heart|cardiac) size",
    ),
    "Lung Opacity": (
        r"opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"haziness",
        r"hazy",
        r"infiltrat(?:e|es|ion|ive)",
        r"air[- ]?space (?:disease|process|opacit(?:y|ies))",
        r"densit(?:y|ies)",
        r"increased (?:\w+ )?markings",
        r"interstitial markings",
        r"ground[- ]glass",
        r"reticul(?:ar|onodular) (?:pattern|changes?)",
    ),
    "Lung Lesion": (
        r"nodules?",
        r"mass(?:es)?",
        r"lesions?",
        r"neoplasms?",
        r"tumou?rs?",
        r"carcinoma",
        r"lung cancer",
        r"malignancy",
        r"metastas[ie]s",
        r"metastatic disease",
        r"mass[- ]?like",
    ),
    "Edema": (
        r"o?edema",
        r"(?:pulmonary|interstitial|alveolar) o?edema",
        r"perihilar haz(?:e|iness)",
        r"kerley(?: b)? lines",
    ),
    "Consolidation": (
        r"consolidat(?:ion|ions|ive|ed|ing)",
    ),
    "Pneumonia": (
        r"(?:broncho)?pneumonias?",
        r"pneumonitis",
        r"pneumonic",
        r"infections?",
        r"infectious(?: process)?",
    ),
    "Atelectasis": (
        r"atelectas[ie]s",
        r"atelectatic",
        r"collapsed?",
    ),
    "Pneumothorax": (
        r"pneumothora(?:x|ces|xes)",
        r"ptx",
    ),
    "Pleural Effusion": (
        r"(?:pleural )?effusions?",
        r"pleural fluid",
        r"hydrothorax",
        r"fissural fluid",
        r"layering fluid",
        rf"blunting of (?:the )?{_W}{{0,3}}costophrenic (?:angles?|sulc[iu]s)",
        rf"blunted {_W}{{0,2}}costophrenic (?:angles?|sulc[iu]s)",
        r"costophrenic (?:angle |sulcus )?blunting",
        r"meniscus",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|plaques?|scarring|calcifications?|fibrosis)",
        r"pleural[- ]parenchymal (?:scarring|thickening)",
        r"thickened pleura",
        r"fibrothorax",
        r"apical (?:pleural )?cap(?:ping)?",
    ),
    "Fracture": (
        r"fractur(?:e|es|ed)",
        r"fx",
        r"rib deformit(?:y|ies)",
        r"deformit(?:y|ies) of the (?:[\w-]+ ){0,6}?ribs?",
        r"compression deformit(?:y|ies)",
    ),
    "Support Devices": (
        r"(?:endotracheal|et|tracheostomy|trach|nasogastric|ng|orogastric|og|enteric|feeding|chest|"
        r"gastrostomy|dobhoff) tubes?",
        r"ett",
        r"ngt",
        r"ogt",
        r"tracheostomy",
        r"dobhoff",
        r"central (?:venous )?(?:line|catheter)s?",
        r"picc(?: line)?s?",
        r"(?:ij|subclavian|jugular|swan[- ]ganz|dialysis|hemodialysis) (?:line|catheter)s?",
        r"catheters?",
        r"pacemakers?",
        r"pacers?",
        r"a?icd",
        r"defibrillators?",
        r"pacing (?:leads?|wires?)",
        r"port[- ]?a[- ]?cath",
        r"mediport",
        r"drains?",
        r"(?:lines and tubes|tubes and lines|support devices|monitoring devices|monitoring leads)",
        r"intra[- ]?aortic balloon pump",
        r"iabp",
        r"(?:valve replacement|prosthetic valve)s?",
    ),
}

# One phrase can be a mention of two observations.
SHARED_PHRASES: dict[str, tuple[str, ...]] = {
    r"hydropneumothora(?:x|ces)": ("Pneumothorax", "Pleural Effusion"),
}

# Look like mentions, are not (matched and discarded; the longest overlapping match wins).
NOT_MENTIONS: tuple[str, ...] = (
    r"pericardial effusions?",
    r"joint effusions?",
    r"mass effect",
    r"(?:lytic|sclerotic|blastic|lucent|expansile|destructive|osseous|bony|bone|skin|cutaneous) lesions?",
    r"lesions? (?:of|in|involving) the (?:[\w-]+ ){0,4}?(?:ribs?|spine|humer(?:us|al head)|clavicles?|scapulae?|"
    r"sternum|vertebra[el]?|bones?)",
    r"(?:mediastinal|pericardial|pleural|breast|chest wall|soft tissue|neck|thyroid|abdominal) mass(?:es)?",
    # Healed infection is history, not pneumonia ("scars of old granulomatous infection").
    r"(?:granulomatous|tuberculous|mycobacterial|fungal) (?:infections?|disease|process)",
    r"(?:old|prior|previous|remote|healed|past) (?:(?:granulomatous|tuberculous|tuberculosis|pulmonary|active|"
    r"lung) ){0,3}(?:infections?|pneumonias?|infectious process)",
    r"bone density",
    r"(?:soft tissue|subcutaneous) o?edema",
    r"(?:vertebral|vertebral body) collapse",
    r"nipple shadows?",
    # A broken device is not a broken bone.
    r"(?:lead|wire|catheter|line|tube|generator)s? fractures?",
    r"fractur(?:e|ed) (?:of )?(?:the |a |an )?(?:[\w-]+ )?(?:sternotomy |sternal )?(?:wires?|leads?|catheters?)",
)

# Uncertainty cues before the mention ("possible pneumonia") ... A finding called probable, likely, presumed,
# consistent with or compatible with is not hedged here: those words are no cue, so it stays positive (1), as in
# NegBio / ChestX-ray14 and in radiologists' use. "Less likely" is still a hedge, "unlikely" a negation.
_FULLY = r"(?:entirely |completely |definitely |confidently |fully |totally |definitively )?"
UNCERTAIN_BEFORE: tuple[str, ...] = (
    rf"(?:cannot|can not|difficult to|unable to) (?:be )?{_FULLY}(?:exclude|excluded|rule out|ruled out)",
    r"exclude|rule-out",
    r"(?:appropriate )?clinical (?:setting|context)(?:,? (?:this|these|it|findings?) "
    r"(?:is|are|could be|may be|would be))?",
    r"could (?:not )?(?:represent|reflect|be|indicate)",
    r"may (?:represent|reflect|be|indicate|have|also)?",
    r"might(?: represent| reflect| be)?",
    r"maybe",
    r"possib(?:le|ly|ility of)",
    r"suspect(?:ed)?|suspicious for|suspicion (?:of|for)",
    r"concern(?:ing)? (?:for|about)",
    r"questionabl[ey]|question(?: of)?",
    r"suggest(?:s|ed|ing|ive of)?",
    r"worrisome for",
    r"favou?ring",
    r"(?:differential|ddx) (?:diagnosis )?(?:includes?|of)?",
    r"(?:evaluate|assess|eval|evaluation|assessment) (?:for|of)|rule out|r/o",
    r"equivocal|indeterminate|uncertain|apparent",
)
# ... and after it ("pneumonia cannot be excluded", "effusion is possible").
UNCERTAIN_AFTER: tuple[str, ...] = (
    rf"(?:cannot|can not|could not|not) (?:be |been )?{_FULLY}(?:excluded|ruled out)",
    rf"(?:is |are )?difficult to {_FULLY}(?:exclude|rule out)",
    r"(?:is|are|was|were|remains?) (?:also |still )?(?:possible|less likely|suspected|questionable|"
    r"not excluded|a (?:possibility|consideration)|(?:a )?concern)",
    r"(?:may|might|could) (?:also )?(?:be (?:present|seen|noted|developing|superimposed|contributing|"
    r"possible|a consideration)|exist|persist)",
    r"in question",
)
# Either side: "? pneumonia", "pneumonia?", "less likely pneumonia", "pneumonia less likely".
UNCERTAIN_EITHER: tuple[str, ...] = (r"\?", r"suspected|questioned", r"less (?:likely|probable)")
# Either side too: "resolved pneumonia", "the pneumonia has resolved".
NEGATION_EITHER: tuple[str, ...] = (r"(?:interval(?:ly)? )?resolved",)
NEGATION_BEFORE: tuple[str, ...] = (
    r"there (?:is|are) no",
    r"no (?:evidence|signs?|findings?) of",
    r"no",
    r"not",
    r"without",
    r"free of",
    r"negative for",
    r"clear of",
    r"absence of",
    r"(?:interval )?(?:resolution|removal) of",
    r"unlikely",
    r"ruled out for|rather than|neither|nor",
)
# History and hypotheticals: the mention is dropped ("history of pneumonia", "could obscure a nodule",
# "correlate clinically for pneumonia"). They reach only the next few words (see the labeler).
IGNORE_BEFORE: tuple[str, ...] = (
    r"(?:(?:past|prior|previous|known|remote) )?(?:medical )?(?:history|hx) of",
    r"h/o",
    r"(?:clinical(?:ly)? )?correlat(?:e|ion)(?: clinically)? (?:for|with|as to)",
    r"(?:could|may|might|can|would) (?:obscure|mask|hide)",
    r"detecting|detection of|to detect|screening for",
)
# ... and after it: described on another study ("nodules were seen on the prior CT").
IGNORE_AFTER: tuple[str, ...] = (
    r"(?:previously )?(?:seen|identified|noted|demonstrated|described|visuali[sz]ed) on (?:the |a |an )?"
    r"(?:[\w-]+ ){0,2}?(?:ct|cts|cat scan|pet|mri|ultrasound)",
)
NEGATION_AFTER: tuple[str, ...] = (
    r"(?:(?:is|are|was|were|has|have) )?(?:not|no longer) (?:been )?(?:\w+[ -])?(?:seen|identified|visuali[sz]ed|"
    r"appreciated|present|evident|demonstrated|detected|noted|visible|apparent)",
    r"(?:(?:has|have) )?(?:(?:since|now|completely|nearly|largely) )?(?:resolved|cleared)",
    r"(?:(?:has|have) been )?removed",
    r"(?:is|are) (?:now )?(?:absent|unlikely|ruled out)",
    r"(?:has|have) been ruled out",
    r"none",
)
# "No change in the effusion" says the effusion is still there.
NOT_NEGATIONS: tuple[str, ...] = (
    r"no (?:(?:significant|interval|appreciable|substantial|definite|major|further|real|notable|marked|"
    r"relevant|overall|gross|sizable|acute) ){0,2}(?:change|changes|increase|decrease|progression|worsening|"
    r"improvement)",
    r"not (?:\w+ )?changed",
    r"without (?:(?:significant|interval|appreciable|substantial|definite|major|further) ){0,2}change",
    r"not only",
)
# Where a clause ends: a cue never reaches across these.
CLAUSE_BREAKS: tuple[str, ...] = (
    r";",
    r"but",
    r"however",
    r"although",
    r"though",
    r"whereas",
    r"while",
    r"aside from",
    r"apart from",
    r"except(?: for)?",
    r"with the exception of",
    r"there (?:is|are|has been|have been)",
)
# Between a cue before and its mention: a new finding starts, so the cue stops here.
SCOPE_STOP = (
    r"[,;] ?(?:and |or )?(?:the|there|this|these|it|which)\b"
    r"|, ?(?:a|an|new|increased|increasing|persistent|persisting|stable|unchanged|worsening|worsened|improving|"
    r"improved|likely|possible|possibly|probable|probably|suspected|residual|interval|again|although)\b"
    r"|\b(?:and|with|plus) (?:the|a|an|there)\b"
    r"|\bwith(?<!compatible with)(?<!consistent with) (?:(?:bilateral|left|right|new) )?(?:small|moderate|large|mild|"
    r"minimal|trace|tiny)\b"
    r"|\b(?:is|are|was|were) (?:\w+ )?(?:seen|noted|present|identified|demonstrated)\b"
)
# A size word after a comma starts a new finding too ("no pneumothorax, small left effusion"), unless the list
# goes on to an "or" ("no consolidation, large effusion, or pneumothorax": one negated list).
LIST_ITEM_STOP = (r", ?(?:small|smaller|mild|mildly|moderate|moderately|large|larger|severe|minimal|trace|tiny|"
                  r"extensive|massive|marked|markedly)\b")
LIST_OR = r"\b(?:or|nor)\b"
# Between two mentions: a differential ("atelectasis or pneumonia", "effusion versus atelectasis").
_NOT_NEG = r"(?!(?:no|not|without|with)\b)"
DIFFERENTIAL = rf"^ ?(?:{_NOT_NEG}[\w-]+ ){{0,3}}?,? ?(?:and/or|or|versus|vs\.?) (?:{_NOT_NEG}[\w-]+ ){{0,3}}$"
# Whether each named alternative of a differential is uncertain (-1, CheXpert) or keeps its own value (False:
# positive unless a cue says otherwise, as in NegBio / ChestX-ray14; measured better, see docs/labeler.md).
DIFFERENTIAL_UNCERTAIN = False

# Report sections that say why the study was done or what came before, not what it shows: skipped up to the next
# heading or blank line ("INDICATION: rule out pneumonia", "HISTORY: prior pneumothorax").
SKIPPED_SECTIONS = (r"indications?|(?:clinical )?history|clinical (?:information|indications?|data|notes?)|"
                    r"reason for (?:exam(?:ination)?|study|request|referral)|comparisons?|technique|procedure")
# Any section heading: an all-capitals name or a known one, then a colon.
SECTION_HEADING = (r"(?<![\w-])(?:[A-Z][A-Z/&()-]+(?: [A-Z][A-Z/&()-]+){0,4}"
                   rf"|(?i:findings?|impressions?|conclusions?|summary|recommendations?|{SKIPPED_SECTIONS})) ?:")

# Fixed-value normal statements: (observation, value, anchor, predicate, predicate before the anchor):
# "<anchor> [filler] [is|are] <predicate>", or "<predicate before> <anchor>" ("normal heart size").
_NORMAL = (r"normal(?: in size| size| caliber)?|within normal limits|unremarkable|of normal size|"
           r"not (?:enlarged|widened|engorged|congested)")
_NORMAL_BEFORE = r"normal|unremarkable"
# "Upper limits of normal" is still normal.
_TOP_NORMAL = r"(?:top|upper|high)(?:[- ](?:limits?|range|end)(?: of)?)?[- ]normal(?: limits)?(?: (?:in|for) size)?"
_HEART = r"heart(?: size)?|cardiac (?:size|silhouette|contours?)"
NORMAL_STATEMENTS: tuple[tuple[str, int, str, str, str], ...] = (
    ("Cardiomegaly", 0, _HEART + r"|cardiac shadow|size of the heart", _NORMAL, _NORMAL_BEFORE),
    ("Cardiomegaly", 0, _HEART, _TOP_NORMAL, _TOP_NORMAL),
    # "Borderline" heart size is read as (mild) cardiomegaly, as in NegBio / ChestX-ray14 (docs/labeler.md).
    ("Cardiomegaly", 1, _HEART, r"borderline(?: enlarged| in size)?", r"borderline"),
    ("Enlarged Cardiomediastinum", 0, r"(?:cardio)?mediastinal(?: (?:silhouette|contours?|width|size))?|"
     r"(?:cardio)?mediastinum", _NORMAL, _NORMAL_BEFORE),
    ("Lung Opacity", 0, r"lungs?(?: fields?| parenchyma)?", r"clear|normal|unremarkable", r"clear|normal|unremarkable"),
    ("Pleural Effusion", 0, r"costophrenic (?:angles?|sulci)|pleural spaces?",
     r"sharp(?:ly defined)?|clear|normal|preserved|well[- ]defined|unremarkable",
     r"sharp(?:ly defined)?|clear|normal|preserved|well[- ]defined|unremarkable"),
    ("Edema", 0, r"(?:pulmonary )?(?:vasculature|vascularity|vessels)|vascular markings", _NORMAL, _NORMAL_BEFORE),
)
# A normal statement's filler may not run over these (it would be about something else).
STATEMENT_STOP = (r"(?:enlarg|widen|increas|promin|abnormal|not\b|no\b|but\b|however|although|volume|opaci|"
                   r"consolid|atelect|nodul|infiltr|effusion|top\b|upper\b|high\b|borderline)")

LATERALITY = re.compile(
    r"\b(?:(?P<left>left)|(?P<right>right)|(?P<both>bilateral(?:ly)?|bibasilar|bibasal(?:ly)?|biapical|both))\b",
    re.IGNORECASE)
SEVERITY_WORDS: dict[str, str] = {
    "small": "small", "smaller": "small", "tiny": "small", "trace": "small", "minimal": "small",
    "minute": "small",
    "mild": "mild", "mildly": "mild", "slight": "mild", "slightly": "mild", "subtle": "mild",
    "moderate": "moderate", "moderately": "moderate", "moderate-sized": "moderate",
    "large": "large", "larger": "large", "extensive": "large", "massive": "large", "sizable": "large",
    "severe": "severe", "severely": "severe", "marked": "severe", "markedly": "severe",
}
SEVERITY = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, SEVERITY_WORDS), key=len, reverse=True))
                       + r")\b", re.IGNORECASE)
