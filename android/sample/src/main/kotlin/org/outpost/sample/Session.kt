// Where the sample keeps the signed-in user's token. A real app asks its identity
// provider here (and refreshes when `refresh` is true); the sample reads the token a
// sign-in step stored.
package org.outpost.sample

import android.content.Context

object Session {
    private const val PREFS = "session"
    private const val TOKEN = "token"

    /** The bearer token, or null when no one is signed in (sync then waits). */
    fun token(context: Context, @Suppress("UNUSED_PARAMETER") refresh: Boolean): String? =
        context.getSharedPreferences(PREFS, Context.MODE_PRIVATE).getString(TOKEN, null)

    fun signIn(context: Context, token: String) {
        context.getSharedPreferences(PREFS, Context.MODE_PRIVATE).edit().putString(TOKEN, token).apply()
    }
}
