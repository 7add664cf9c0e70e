"""FreeSWITCH over the event socket (ESL): codec, client, tracker, loopback servers.

The rest of ringwatch imports only :mod:`telephony.esl.adapter`.
"""
