// The sample's records, as the typed API reads and writes them: one class per
// collection, its properties the record's top-level fields.
package org.outpost.sample

import kotlinx.serialization.Serializable
import org.outpost.Counter

/** A patient, registered once and seen on every visit. */
@Serializable
data class Patient(
    val name: String,
    val village: String,
    val age: Int? = null,
    /** Visits counted on every device that recorded one, merged rather than overwritten. */
    val visits: Counter = Counter(),
)

/** One survey answered at a visit. Fields added by a later version get defaults. */
@Serializable
data class Survey(
    val patientId: String,
    val recordedAtMs: Long,
    val temperatureC: Double? = null,
    val coughing: Boolean = false,
    val notes: String = "",
)
