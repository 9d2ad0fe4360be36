// The patient list: live from the local store (observe), searchable, with each row's
// sync state and the sync status on top. It never waits on the network.
package org.outpost.sample

import android.app.Activity
import android.os.Bundle
import android.text.Editable
import android.text.TextWatcher
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ListView
import android.widget.TextView
import kotlinx.coroutines.ExperimentalCoroutinesApi
import kotlinx.coroutines.MainScope
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.catch
import kotlinx.coroutines.flow.debounce
import kotlinx.coroutines.flow.flatMapLatest
import kotlinx.coroutines.launch
import org.outpost.Entry
import org.outpost.OutpostTypedException
import org.outpost.collection
import org.outpost.ffi.SyncActivity
import org.outpost.ffi.SyncState
import org.outpost.ffi.SyncStatus
import org.outpost.query

class PatientListActivity : Activity() {
    private val scope = MainScope()
    private val searchText = MutableStateFlow("")
    private var shown: List<Entry<Patient>> = emptyList()

    @OptIn(ExperimentalCoroutinesApi::class, kotlinx.coroutines.FlowPreview::class)
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val status = TextView(this)
        val search = EditText(this).apply { hint = "Search by name" }
        val newPatient = Button(this).apply { text = "New patient" }
        val rows = ArrayAdapter<String>(this, android.R.layout.simple_list_item_1, mutableListOf())
        val list = ListView(this).apply { adapter = rows }
        setContentView(
            LinearLayout(this).apply {
                orientation = LinearLayout.VERTICAL
                listOf(status, search, newPatient, list).forEach(::addView)
            },
        )
        search.addTextChangedListener(
            object : TextWatcher {
                override fun afterTextChanged(s: Editable?) {
                    searchText.value = s?.toString().orEmpty()
                }

                override fun beforeTextChanged(s: CharSequence?, start: Int, count: Int, after: Int) {}

                override fun onTextChanged(s: CharSequence?, start: Int, before: Int, count: Int) {}
            },
        )
        newPatient.setOnClickListener { startActivity(SurveyFormActivity.intent(this, patientId = null)) }
        list.setOnItemClickListener { _, _, position, _ ->
            shown.getOrNull(position)?.let { startActivity(SurveyFormActivity.intent(this, it.id)) }
        }

        scope.launch {
            val outpost = (application as SurveyApp).outpost()
            launch { outpost.syncStatus.collect { status.text = describe(it) } }
            val patients = outpost.collection<Patient>(SurveyApp.PATIENTS)
            searchText
                .debounce(150)
                .flatMapLatest { text ->
                    patients.observeEntries(
                        query {
                            if (text.isNotBlank()) where { search(text) }
                            orderBy("village")
                            orderBy("name")
                        },
                    )
                }.catch { e ->
                    // A record an older version of the app cannot read: say so, keep running.
                    if (e !is OutpostTypedException) throw e
                    status.text = "Some patients need an app update to show"
                }.collect { entries ->
                    shown = entries
                    rows.clear()
                    rows.addAll(entries.map { row(it) })
                }
        }
    }

    override fun onDestroy() {
        scope.cancel()
        super.onDestroy()
    }

    private fun row(e: Entry<Patient>): String {
        val p = e.value
        val mark =
            when (e.syncState) {
                SyncState.SYNCED -> ""
                SyncState.PENDING -> " ↑"
                SyncState.CONFLICTED -> " (check)"
                SyncState.FAILED -> " (not sent)"
            }
        return "${p.name}, ${p.village} · ${p.visits.value} visits$mark"
    }

    private fun describe(s: SyncStatus): String =
        when (s.activity) {
            SyncActivity.SYNCING -> "Syncing…"
            SyncActivity.OFFLINE -> "Offline · ${s.pending} to send"
            SyncActivity.SIGNED_OUT -> "Signed out"
            SyncActivity.AUTH_ERROR -> "Sign in again to sync"
            SyncActivity.BACKING_OFF -> "Will retry · ${s.pending} to send"
            SyncActivity.IDLE -> if (s.pending == 0uL) "Up to date" else "${s.pending} to send"
        }
}
