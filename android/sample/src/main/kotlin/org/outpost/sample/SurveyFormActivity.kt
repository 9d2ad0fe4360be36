// The survey form: saving writes the patient and the survey locally (durable when save
// returns), counts the visit, and asks for a sync soon. The user never waits for the
// network; WorkManager sends it when it can.
package org.outpost.sample

import android.app.Activity
import android.content.Context
import android.content.Intent
import android.os.Bundle
import android.text.InputType
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.TextView
import kotlinx.coroutines.MainScope
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import org.outpost.collection
import org.outpost.ffi.OutpostException
import org.outpost.android.OutpostSyncScheduler

class SurveyFormActivity : Activity() {
    private val scope = MainScope()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val patientId: String? = intent.getStringExtra(PATIENT_ID)
        val name = EditText(this).apply { hint = "Name" }
        val village = EditText(this).apply { hint = "Village" }
        val age = EditText(this).apply {
            hint = "Age"
            inputType = InputType.TYPE_CLASS_NUMBER
        }
        val temperature = EditText(this).apply {
            hint = "Temperature (°C)"
            inputType = InputType.TYPE_CLASS_NUMBER or InputType.TYPE_NUMBER_FLAG_DECIMAL
        }
        val coughing = CheckBox(this).apply { text = "Coughing" }
        val notes = EditText(this).apply { hint = "Notes" }
        val message = TextView(this)
        val save = Button(this).apply { text = "Save" }
        setContentView(
            LinearLayout(this).apply {
                orientation = LinearLayout.VERTICAL
                listOf(name, village, age, temperature, coughing, notes, save, message).forEach(::addView)
            },
        )

        scope.launch {
            val outpost = (application as SurveyApp).outpost()
            val patients = outpost.collection<Patient>(SurveyApp.PATIENTS)
            patientId?.let { id ->
                patients.get(id)?.let { p ->
                    name.setText(p.name)
                    village.setText(p.village)
                    age.setText(p.age?.toString().orEmpty())
                }
            }
            save.setOnClickListener {
                scope.launch {
                    save.isEnabled = false
                    try {
                        val saved =
                            patients.put(
                                patientId,
                                Patient(
                                    name = name.text.toString().trim(),
                                    village = village.text.toString().trim(),
                                    age = age.text.toString().toIntOrNull(),
                                ),
                            )
                        outpost.collection<Survey>(SurveyApp.SURVEYS).put(
                            null,
                            Survey(
                                patientId = saved.id,
                                recordedAtMs = System.currentTimeMillis(),
                                temperatureC = temperature.text.toString().toDoubleOrNull(),
                                coughing = coughing.isChecked,
                                notes = notes.text.toString(),
                            ),
                        )
                        patients.increment(saved.id, Patient::visits)
                        OutpostSyncScheduler.syncSoon(this@SurveyFormActivity)
                        finish()
                    } catch (e: OutpostException.InvalidData) {
                        // The core's own validation: nothing was stored.
                        message.text = e.message
                        save.isEnabled = true
                    }
                }
            }
        }
    }

    override fun onDestroy() {
        scope.cancel()
        super.onDestroy()
    }

    companion object {
        private const val PATIENT_ID = "patientId"

        fun intent(context: Context, patientId: String?) =
            Intent(context, SurveyFormActivity::class.java).putExtra(PATIENT_ID, patientId)
    }
}
